"""ONNX Runtime backends: CPU execution provider, CUDA first when this onnxruntime has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jepa_wm.backends.base import BackendUnavailable, EncoderBackend, PredictorBackend
from jepa_wm.backends.onnx_export import read_manifest
from jepa_wm.core.config import ModelConfig


def _session(path, providers=None, threads: int = 0):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime unavailable: {e}") from e
    if not Path(path).is_file():
        raise BackendUnavailable(f"onnxruntime unavailable: {path} not found (run `jepa-wm export`)")
    available = ort.get_available_providers()
    wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads  # 0: onnxruntime's default, all cores
    try:
        return ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as e:  # onnxruntime's own types (InvalidProtobuf, Fail, ...): a damaged or foreign graph
        raise BackendUnavailable(f"onnxruntime unavailable: cannot load {path}: {type(e).__name__}: {e}") from e


def _np(x):
    return np.ascontiguousarray(x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x, np.float32))


class OrtEncoder(EncoderBackend):
    name = "onnxruntime"

    def __init__(self, onnx_dir, providers=None, threads: int = 0, manifest: dict | None = None):
        manifest = manifest or read_manifest(onnx_dir)
        super().__init__(ModelConfig.from_dict(manifest["model_config"]))
        self.threads = threads
        self.session = _session(Path(onnx_dir) / manifest["files"]["encoder"], providers, threads)
        self.providers = self.session.get_providers()

    def encode_pixels(self, pixels):
        return torch.from_numpy(self.session.run(None, {"pixels": _np(pixels)})[0])


class OrtPredictor(PredictorBackend):
    name = "onnxruntime"

    def __init__(self, onnx_dir, providers=None, threads: int = 0, manifest: dict | None = None):
        """manifest: the export's, when the caller has it (`jepa-wm export` verifies before writing it)."""
        manifest = manifest or read_manifest(onnx_dir)
        super().__init__(ModelConfig.from_dict(manifest["model_config"]))
        self.horizon, self.threads = manifest["horizon"], threads
        self.verified = manifest.get("verified")  # the check's record, False (--no-verify), None (not recorded)
        files = manifest["files"]
        self.rollout_session = _session(Path(onnx_dir) / files["rollout"], providers, threads)
        self.predict_session = None  # built on first predict(): the planner never needs it
        self._predict_args = (Path(onnx_dir) / files["predictor"], providers, threads)
        self.providers = self.rollout_session.get_providers()
        # A history-1 export has no history_actions input (the exporter drops an unused one).
        self.rollout_inputs = {i.name for i in self.rollout_session.get_inputs()}

    def predict(self, latents, actions):
        if self.predict_session is None:
            self.predict_session = _session(*self._predict_args)
        out = self.predict_session.run(None, {"latents": _np(latents), "actions": _np(actions)})[0]
        return torch.from_numpy(out)

    def rollout(self, history, history_actions, plan_actions, prefix=None):
        if plan_actions.shape[1] != self.horizon:
            raise ValueError(
                f"rollout.onnx was exported for horizon {self.horizon}, the planner asks for "
                f"{plan_actions.shape[1]}: re-export with --horizon {plan_actions.shape[1]}"
            )
        if history.shape[0] != 1:
            raise ValueError("rollout.onnx takes one shared history (batch 1)")
        if history.shape[1] != self.cfg.history:
            # The graph's history length is fixed at export; the planner node waits for a full history.
            raise ValueError(f"rollout.onnx takes a history of {self.cfg.history} latents, got {history.shape[1]}")
        feeds = {"history": _np(history), "history_actions": _np(history_actions), "plan_actions": _np(plan_actions)}
        feeds = {k: v for k, v in feeds.items() if k in self.rollout_inputs}
        return torch.from_numpy(self.rollout_session.run(None, feeds)[0])
