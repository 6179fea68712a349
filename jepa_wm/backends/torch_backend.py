"""PyTorch backends, fp32 or bf16 (a private reduced-precision copy of the weights)."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from jepa_wm.backends.base import EncoderBackend, PredictorBackend

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def bf16_is_fast(device="cpu") -> bool:
    """bf16 matmuls run in hardware: a CUDA GPU that has them, or a CPU with AVX512-BF16 or AMX.

    Elsewhere PyTorch emulates bf16, about 20x slower than fp32 (seen on a 2-core AVX2 EPYC).
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device="cpu") -> str:
    """'auto' -> 'bfloat16' where bf16 is fast on `device`, else 'float32'; other names pass through."""
    if precision == "auto":
        return "bfloat16" if bf16_is_fast(device) else "float32"
    return precision


def _dtype(precision: str, device="cpu") -> torch.dtype:
    precision = resolve_precision(precision, device)
    if precision not in DTYPES:
        raise ValueError(f"torch backend precision {precision!r}: choose auto, float32 or bfloat16")
    return DTYPES[precision]


def _copy_as(model, dtype):
    # Casting the weights once beats autocast's per-call casts on a CPU.
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


class TorchEncoder(EncoderBackend):
    name = "torch"

    def __init__(self, model, precision: str = "float32"):
        super().__init__(model.cfg)
        self.dtype = _dtype(precision, next(model.parameters()).device)
        self.precision = str(self.dtype).removeprefix("torch.")
        self.model = _copy_as(model, self.dtype).eval()

    @torch.no_grad()
    def encode_pixels(self, pixels):
        return self.model.encode(pixels.to(self.dtype))


class TorchPredictor(PredictorBackend):
    """split_batch > 1: cut the candidates into that many chunks, rolled out concurrently by
    Python threads with one intra-op thread each. The rollout's many small element-wise ops
    then run without OpenMP fork/join between the cores (measured ~10% faster per plan on
    2 cores, same numbers). It sets torch.set_num_threads(1) for the call's duration
    (process-wide), so use it where the planner owns the process, as the planner node does."""

    name = "torch"

    def __init__(self, model, precision: str = "float32", split_batch: int = 1):
        super().__init__(model.cfg)
        self.dtype = _dtype(precision, next(model.parameters()).device)
        self.precision = str(self.dtype).removeprefix("torch.")
        self.model = _copy_as(model, self.dtype).eval()
        self.split_batch = max(1, int(split_batch))
        self._pool = ThreadPoolExecutor(self.split_batch) if self.split_batch > 1 else None

    @torch.no_grad()
    def observe(self, history, history_actions):
        return self.model.observe(history.to(self.dtype), history_actions.to(self.dtype))

    @torch.no_grad()
    def predict(self, latents, actions):
        return self.model.predict(latents.to(self.dtype), actions.to(self.dtype)).float()

    @torch.no_grad()
    def rollout(self, history, history_actions, plan_actions, prefix=None):
        d = self.dtype
        history, history_actions, plan_actions = history.to(d), history_actions.to(d), plan_actions.to(d)
        if prefix is None:
            prefix = self.model.observe(history, history_actions)
        if self._pool is None or plan_actions.shape[0] < 8 * self.split_batch or history.shape[0] != 1:
            return self.model.rollout(history, history_actions, plan_actions, prefix=prefix).float()

        def part(chunk):
            with torch.no_grad():
                return self.model.rollout(history, history_actions, chunk, prefix=prefix)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            parts = list(self._pool.map(part, plan_actions.chunk(self.split_batch)))
        finally:
            torch.set_num_threads(threads)
        return torch.cat(parts).float()
