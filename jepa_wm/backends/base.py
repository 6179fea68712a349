"""The backend interface: what the planner and the nodes need from an inference runtime.

An `EncoderBackend` turns camera frames into latents; a `PredictorBackend`
imagines latents under candidate action sequences. Both take and return
float32 torch tensors on the CPU (whatever runs inside: PyTorch, ONNX Runtime,
TensorRT), so they are interchangeable under `CEMPlanner`:

    enc, pred = select_backend(["tensorrt", "onnxruntime", "torch"], model=model, onnx_dir=d)
    z = enc.encode(frames_uint8)                        # (B, D)
    planner = CEMPlanner(pred, PlannerConfig(...))      # pred.rollout(...) per CEM iteration

A predictor backend exposes `cfg` (the ModelConfig), `rollout(history,
history_actions, plan_actions, prefix=None)` like `WorldModel.rollout`, and
`observe(history, history_actions)` (the per-plan prefix, or None when the
backend recomputes it inside its own graph).
"""

from __future__ import annotations

import torch

from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import preprocess


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (missing package, GPU or file); the message says why."""


class EncoderBackend:
    name = "base"
    precision = "float32"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def encode(self, frames) -> torch.Tensor:
        """uint8 RGB frames (..., H, W, 3) or preprocessed float pixels (B, 3, S, S) -> latents (B, D) float32."""
        if torch.is_tensor(frames) and frames.is_floating_point():
            pixels = frames
        else:
            pixels = preprocess(frames, self.cfg.image_size)
        return self.encode_pixels(pixels.float().contiguous()).float()

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PredictorBackend:
    """Drives the CEM planner: `CEMPlanner(backend, cfg)` works for every backend."""

    name = "base"
    precision = "float32"
    verified = True  # False: runs an export whose outputs `jepa-wm export` never compared with PyTorch

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._device_anchor = torch.zeros(0)

    def parameters(self):
        # CEMPlanner reads the device of the model's first parameter: planning tensors live on the CPU.
        yield self._device_anchor

    def observe(self, history, history_actions):
        return None

    def predict(self, latents, actions) -> torch.Tensor:
        """Teacher-forced (B, T, D), (B, T, A) -> (B, T, D) predictions."""
        raise NotImplementedError

    def rollout(self, history, history_actions, plan_actions, prefix=None) -> torch.Tensor:
        raise NotImplementedError
