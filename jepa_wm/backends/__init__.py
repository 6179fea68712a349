"""Inference backends for the encoder and the planner's predictor: torch, onnxruntime, tensorrt.

    from jepa_wm.backends import select_backend
    sel = select_backend(["tensorrt", "onnxruntime", "torch"], model=model, onnx_dir="models/onnx")
    z = sel.encoder.encode(frames_uint8)            # (B, D) float32
    planner = CEMPlanner(sel.predictor, planner_cfg)

Every backend returns float32 CPU torch tensors; see `base.py` for the
interface and `config/backends.yaml` for the settings and their defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from jepa_wm.backends.base import BackendUnavailable, EncoderBackend, PredictorBackend

__all__ = [
    "BackendUnavailable", "EncoderBackend", "PredictorBackend", "Selection", "select_backend",
    "load_backend_config", "make_backend", "BACKENDS",
]

BACKENDS = ("tensorrt", "onnxruntime", "torch")
DEFAULT_CONFIG = {
    "order": list(BACKENDS),
    "onnx_dir": "models/onnx",
    "torch": {"precision": "auto", "split_batch": 2},
    "onnxruntime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "intra_op_num_threads": 0},
    "tensorrt": {
        "model_file_path": "", "engine_file_path": "", "force_engine_update": False, "precision": "fp16",
        "workspace_size": 1 << 30, "timing_cache_path": "", "batch_min": 1, "batch_opt": 300, "batch_max": 512,
    },
}

log = logging.getLogger("jepa_wm.backends")


def load_backend_config(path=None) -> dict:
    """config/backends.yaml (its `backends:` section) merged over the built-in defaults."""
    import copy

    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path is None:
        from jepa_wm.resources import config_file

        here = config_file("backends.yaml")  # the source tree's, or the installed share/jepa_wm/config's
        path = here if here.is_file() else None
    if path is not None:
        import yaml

        data = (yaml.safe_load(Path(path).read_text()) or {}).get("backends", {})
        unknown = sorted(set(data) - set(cfg))
        if unknown:
            raise ValueError(f"{path}: unknown backends key(s) {unknown}; valid: {sorted(cfg)}")
        for k, v in data.items():
            if isinstance(cfg[k], dict):
                bad = sorted(set(v or {}) - set(cfg[k]))
                if bad:
                    raise ValueError(f"{path}: unknown backends.{k} key(s) {bad}; valid: {sorted(cfg[k])}")
                cfg[k].update(v or {})
            else:
                cfg[k] = v
    return cfg


@dataclass
class Selection:
    name: str
    encoder: EncoderBackend
    predictor: PredictorBackend
    skipped: dict = field(default_factory=dict)  # backend -> why it was not used
    message: str = ""


def _check_export(name: str, src, checkpoint, model, horizon) -> None:
    """BackendUnavailable unless the export in src was made from `checkpoint` for this model and horizon:
    a stale export (the parent of a fine-tune, another horizon) must fall back, not run or fail every plan."""
    from jepa_wm.backends.onnx_export import check_manifest, read_manifest

    try:
        check_manifest(read_manifest(src), src, checkpoint=checkpoint,
                       model_cfg=model.cfg if model is not None else None, horizon=horizon)
    except ValueError as e:
        raise BackendUnavailable(f"{name} unavailable: {e}") from None


def make_backend(name: str, model=None, onnx_dir=None, config: dict | None = None, precision: str | None = None,
                 checkpoint=None, horizon: int | None = None):
    """(encoder, predictor) of one backend, or BackendUnavailable with the reason.

    checkpoint (the file `model` was loaded from) and horizon (the planner's): an ONNX export made
    from another checkpoint, model config or horizon is refused (BackendUnavailable). None skips the check.
    """
    cfg = config or load_backend_config()
    onnx_dir = onnx_dir or cfg.get("onnx_dir")
    if name == "torch":
        from jepa_wm.backends.torch_backend import TorchEncoder, TorchPredictor

        if model is None:
            raise BackendUnavailable("torch unavailable: no PyTorch model (checkpoint) given")
        p = precision or cfg["torch"]["precision"]
        return TorchEncoder(model, p), TorchPredictor(model, p, cfg["torch"].get("split_batch", 1))
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable(f"onnxruntime unavailable: {e}") from e
        from jepa_wm.backends.ort_backend import OrtEncoder, OrtPredictor

        if not onnx_dir or not (Path(onnx_dir) / "manifest.json").is_file():
            raise BackendUnavailable(f"onnxruntime unavailable: no exported model in {onnx_dir} "
                                     "(run `jepa-wm export --model CKPT --out DIR`)")
        _check_export(name, onnx_dir, checkpoint, model, horizon)
        o = cfg["onnxruntime"]
        return (OrtEncoder(onnx_dir, o["providers"], o["intra_op_num_threads"]),
                OrtPredictor(onnx_dir, o["providers"], o["intra_op_num_threads"]))
    if name == "tensorrt":
        from jepa_wm.backends.tensorrt_backend import EngineSettings, TrtEncoder, TrtPredictor, import_tensorrt

        import_tensorrt()  # raises BackendUnavailable with the reason (no module, no GPU)
        t = dict(cfg["tensorrt"])
        if precision:
            t["precision"] = precision
        src = t.get("model_file_path") or onnx_dir
        if not src or not (Path(src) / "manifest.json").is_file():
            raise BackendUnavailable(f"tensorrt unavailable: no exported ONNX model in {src}")
        _check_export(name, src, checkpoint, model, horizon)
        engines = t.get("engine_file_path") or str(Path(src) / "engines")
        settings = EngineSettings(**t)
        return TrtEncoder(src, engines, settings), TrtPredictor(src, engines, settings)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")


def select_backend(order=None, model=None, onnx_dir=None, config: dict | None = None, logger=None,
                   checkpoint=None, horizon: int | None = None) -> Selection:
    """The first backend of `order` that runs here; logs one line with the choice and the skipped ones' reasons.

    checkpoint, horizon: see make_backend (an export that does not fit them is skipped with the reason)."""
    cfg = config or load_backend_config()
    order = list(order or cfg["order"])
    skipped = {}
    for name in order:
        try:
            enc, pred = make_backend(name, model=model, onnx_dir=onnx_dir, config=cfg, checkpoint=checkpoint,
                                     horizon=horizon)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            continue
        detail = getattr(pred, "providers", None) or [pred.precision]
        why = "; ".join(skipped.values())
        msg = f"inference backend: {name} ({', '.join(detail)})" + (f"; skipped {why}" if why else "")
        (logger or log).info(msg)
        return Selection(name, enc, pred, skipped, msg)
    raise BackendUnavailable("no inference backend available: " + "; ".join(skipped.values()))
