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
from jepa_wm.core.config import ConfigError

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
    """config/backends.yaml (its `backends:` section) merged over the built-in defaults; ConfigError names
    the file and the key of a value that is unknown, of the wrong type or out of range."""
    import copy

    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path is None:
        from jepa_wm.resources import config_file

        here = config_file("backends.yaml")  # the source tree's, or the installed share/jepa_wm/config's
        path = here if here.is_file() else None
    if path is not None:
        for k, v in _read_section(path).items():
            if isinstance(cfg[k], dict):
                v = _mapping(v, path, f"backends.{k}")
                bad = sorted(set(v) - set(cfg[k]))
                if bad:
                    raise ConfigError(f"{path}: unknown backends.{k} key(s) {bad}; valid: {sorted(cfg[k])}")
                cfg[k].update(v)
            else:
                cfg[k] = v
    _check_config(cfg, path or "built-in backend defaults")
    return cfg


def _mapping(value, path, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} must be a mapping of keys to values, got {value!r}")
    return value


def _read_section(path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    section = _mapping(_mapping(data, path, "the file").get("backends"), path, "backends")
    unknown = sorted(set(section) - set(DEFAULT_CONFIG), key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown backends key(s) {unknown}; valid: {sorted(DEFAULT_CONFIG)}")
    return section


def _check_config(cfg: dict, path) -> None:
    from jepa_wm.backends.tensorrt_backend import EngineSettings
    from jepa_wm.core.config import check_types

    def need(ok, key, what):
        if not ok:
            value = cfg
            for part in key.split("."):
                value = value[part]
            raise ConfigError(f"{path}: backends.{key} is {value!r}; {what}")

    order = cfg["order"]
    # A string is refused, not read as a list of its characters.
    need(isinstance(order, list) and order and all(n in BACKENDS for n in order), "order",
         f"give a non-empty list from {list(BACKENDS)}")
    need(isinstance(cfg["onnx_dir"], str), "onnx_dir", "give a directory path")
    t, o = cfg["torch"], cfg["onnxruntime"]
    need(t["precision"] in ("float32", "bfloat16", "auto"), "torch.precision", "choose float32, bfloat16 or auto")
    need(_is_int(t["split_batch"]) and t["split_batch"] >= 1, "torch.split_batch", "give an integer >= 1")
    need(isinstance(o["providers"], list) and all(isinstance(x, str) for x in o["providers"]),
         "onnxruntime.providers", "give a list of execution provider names")
    need(_is_int(o["intra_op_num_threads"]) and o["intra_op_num_threads"] >= 0,
         "onnxruntime.intra_op_num_threads", "give an integer >= 0 (0: all cores)")
    where = f"{path}: backends.tensorrt"
    check_types(EngineSettings, cfg["tensorrt"], where)  # unknown keys were refused on reading
    try:
        EngineSettings(**cfg["tensorrt"])  # ranges: precision, batch profile, workspace
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class Selection:
    name: str
    encoder: EncoderBackend
    predictor: PredictorBackend
    skipped: dict = field(default_factory=dict)  # backend -> why it was not used
    message: str = ""


def _check_export(name: str, src, checkpoint, model, horizon) -> dict:
    """The manifest of the export in src, or BackendUnavailable unless it is intact (every graph's sha256 as
    exported) and was made from `checkpoint` for this model and horizon: a stale or damaged export (the parent
    of a fine-tune, another horizon, a truncated copy) must fall back, not run or fail every plan."""
    from jepa_wm.backends.onnx_export import check_files, check_manifest, read_manifest

    try:
        manifest = read_manifest(src)
        check_files(manifest, src)
        check_manifest(manifest, src, checkpoint=checkpoint,
                       model_cfg=model.cfg if model is not None else None, horizon=horizon)
    except (ValueError, BackendUnavailable) as e:
        raise BackendUnavailable(f"{name} unavailable: {e}") from None
    return manifest


def make_backend(name: str, model=None, onnx_dir=None, config: dict | None = None, precision: str | None = None,
                 checkpoint=None, horizon: int | None = None, samples: int | None = None):
    """(encoder, predictor) of one backend, or BackendUnavailable with the reason.

    checkpoint (the file `model` was loaded from) and horizon (the planner's): an ONNX export made
    from another checkpoint, model config or horizon is refused (BackendUnavailable). None skips the check.
    samples (the planner's): a TensorRT batch profile that cannot take it is refused. Any other error while
    building the backend (a graph ONNX Runtime cannot load, ...) is a BackendUnavailable naming it too, so
    that selection falls back to the next backend and says why.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    cfg = config or load_backend_config()
    onnx_dir = onnx_dir or cfg.get("onnx_dir")
    build = {"torch": _torch, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}[name]
    try:
        return build(cfg, model=model, onnx_dir=onnx_dir, precision=precision, checkpoint=checkpoint,
                     horizon=horizon, samples=samples)
    except BackendUnavailable:
        raise
    except Exception as e:
        where = "" if name == "torch" else f" (export {onnx_dir})"
        raise BackendUnavailable(f"{name} unavailable{where}: {type(e).__name__}: {e}") from e


def _torch(cfg, model, precision, **_):
    from jepa_wm.backends.torch_backend import TorchEncoder, TorchPredictor

    if model is None:
        raise BackendUnavailable("torch unavailable: no PyTorch model (checkpoint) given")
    p = precision or cfg["torch"]["precision"]
    return TorchEncoder(model, p), TorchPredictor(model, p, cfg["torch"].get("split_batch", 1))


def _onnxruntime(cfg, model, onnx_dir, checkpoint, horizon, **_):
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime unavailable: {e}") from e
    from jepa_wm.backends.ort_backend import OrtEncoder, OrtPredictor

    if not onnx_dir or not (Path(onnx_dir) / "manifest.json").is_file():
        raise BackendUnavailable(f"onnxruntime unavailable: no exported model in {onnx_dir} "
                                 "(run `jepa-wm export --model CKPT --out DIR`)")
    manifest = _check_export("onnxruntime", onnx_dir, checkpoint, model, horizon)
    o = cfg["onnxruntime"]
    return (OrtEncoder(onnx_dir, o["providers"], o["intra_op_num_threads"], manifest),
            OrtPredictor(onnx_dir, o["providers"], o["intra_op_num_threads"], manifest))


def _tensorrt(cfg, model, onnx_dir, precision, checkpoint, horizon, samples):
    from jepa_wm.backends.tensorrt_backend import EngineSettings, TrtEncoder, TrtPredictor, import_tensorrt

    t = dict(cfg["tensorrt"])
    if precision:
        t["precision"] = precision
    settings = EngineSettings(**t)
    import_tensorrt()  # raises BackendUnavailable with the reason (no module, no GPU): the first thing to fix
    if samples is not None and not settings.batch_min <= samples <= settings.batch_max:
        # Checked here, once: the engine would refuse every control step's rollout.
        raise BackendUnavailable(f"tensorrt unavailable: the planner's {samples} samples are outside the engine's "
                                 f"batch profile {settings.batch_min}..{settings.batch_max}: set tensorrt "
                                 "batch_min/batch_max in config/backends.yaml")
    src = t.get("model_file_path") or onnx_dir
    if not src or not (Path(src) / "manifest.json").is_file():
        raise BackendUnavailable(f"tensorrt unavailable: no exported ONNX model in {src}")
    _check_export("tensorrt", src, checkpoint, model, horizon)
    engines = t.get("engine_file_path") or str(Path(src) / "engines")
    return TrtEncoder(src, engines, settings), TrtPredictor(src, engines, settings)


def select_backend(order=None, model=None, onnx_dir=None, config: dict | None = None, logger=None,
                   checkpoint=None, horizon: int | None = None, samples: int | None = None) -> Selection:
    """The first backend of `order` that runs here; logs one line with the choice and the skipped ones' reasons,
    and a warning when the chosen backend runs an export that `jepa-wm export` did not verify.

    checkpoint, horizon, samples: see make_backend (an export that does not fit them is skipped with the reason)."""
    cfg = config or load_backend_config()
    order = list(order or cfg["order"])
    skipped = {}
    for name in order:
        try:
            enc, pred = make_backend(name, model=model, onnx_dir=onnx_dir, config=cfg, checkpoint=checkpoint,
                                     horizon=horizon, samples=samples)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            continue
        detail = getattr(pred, "providers", None) or [pred.precision]
        why = "; ".join(skipped.values())
        msg = f"inference backend: {name} ({', '.join(detail)})" + (f"; skipped {why}" if why else "")
        (logger or log).info(msg)
        if pred.verified is None:  # an export from before the manifest recorded its check
            (logger or log).info(f"{name} runs an export that does not record whether `jepa-wm export` verified it "
                                 "(an earlier version's): re-export to record the check")
        elif not pred.verified:
            (logger or log).warning(f"{name} runs an unverified export (made with --no-verify or by export_onnx): "
                                    "its outputs were never compared with PyTorch; re-export with `jepa-wm export` "
                                    "to check them")
        return Selection(name, enc, pred, skipped, msg)
    raise BackendUnavailable("no inference backend available: " + "; ".join(skipped.values()))
