"""`jepa-wm build-engine`: build (or reuse) a cached TensorRT engine from an ONNX file.

The engine is rebuilt when --force is given or when its cache key (sha256 of
the ONNX bytes, TensorRT version, GPU model, precision, batch profile) differs
from the one stored next to it; otherwise the cached plan is kept. Defaults
come from config/backends.yaml (`tensorrt:` section, Isaac ROS parameter names).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jepa_wm.cli import positive_int


def batch_profile(text: str) -> tuple[int, int, int]:
    """argparse type for --batch: MIN,OPT,MAX, integers with 1 <= MIN <= OPT <= MAX."""
    try:
        lo, opt, hi = (int(x) for x in text.split(","))
    except ValueError:
        lo = opt = hi = 0
    if not 1 <= lo <= opt <= hi:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,OPT,MAX: three integers with 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def add_arguments(p):
    p.add_argument("--onnx", required=True, help="ONNX model (model_file_path)")
    p.add_argument("--engine", required=True, help="engine plan to write or reuse (engine_file_path)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached engine matches (force_engine_update)")
    p.add_argument("--fp16", action="store_true", help="shorthand for --precision fp16")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--workspace-size", type=positive_int, default=None, help="builder workspace pool limit, bytes")
    p.add_argument("--batch", type=batch_profile, default=None, help="min,opt,max of the dynamic batch (default from config/backends.yaml)")
    p.add_argument("--config", default=None, help="backends YAML (default: config/backends.yaml)")


def run(args) -> int:
    from jepa_wm.backends import BackendUnavailable, load_backend_config
    from jepa_wm.backends.onnx_export import MANIFEST, read_manifest
    from jepa_wm.backends.tensorrt_backend import EngineSettings, build_engine, import_tensorrt
    from jepa_wm.core.config import ConfigError

    t = dict(load_backend_config(args.config)["tensorrt"])  # ConfigError names the file and the key
    t.pop("model_file_path", None)
    t.pop("engine_file_path", None)
    if args.fp16:
        t["precision"] = "fp16"
    if args.precision:
        t["precision"] = args.precision
    if args.workspace_size:
        t["workspace_size"] = args.workspace_size
    if args.batch:
        t["batch_min"], t["batch_opt"], t["batch_max"] = args.batch
    settings = EngineSettings(model_file_path=args.onnx, engine_file_path=args.engine, **t)
    try:
        import_tensorrt()
    except BackendUnavailable as e:
        raise BackendUnavailable(
            f"cannot build a TensorRT engine here: {e}. TensorRT needs an NVIDIA GPU, the tensorrt Python package "
            "(pip install 'jepa_wm[tensorrt]') and a CUDA build of PyTorch; on this machine use the onnxruntime "
            "or torch backend instead.") from None
    if not Path(args.onnx).is_file():
        raise ConfigError(f"--onnx {args.onnx}: no such file")
    shapes = None
    if (Path(args.onnx).parent / MANIFEST).is_file():
        m = read_manifest(Path(args.onnx).parent)  # a damaged one is refused, naming the file
        for name, fname in m["files"].items():
            if Path(fname).name == Path(args.onnx).name:
                shapes = {k: [-1 if isinstance(d, str) else d for d in v] for k, v in m["inputs"][name].items()}
    try:
        result = build_engine(args.onnx, args.engine, settings, force=args.force, input_shapes=shapes)
    except RuntimeError as e:  # TensorRT could not parse or build this ONNX file: the message says which
        raise BackendUnavailable(str(e)) from None
    verb = "built" if result["rebuilt"] else "reused"
    print(f"{verb} {result['engine']} ({result['reason']}; key {result['key'][:16]})")
    return 0
