"""TensorRT engines: build (or reuse) a cached plan from an ONNX file, and run it.

Follows the Isaac ROS TensorRT node's parameters (model_file_path,
engine_file_path, force_engine_update, precision / fp16, workspace_size) and
the Python build idiom:

    builder -> network (strongly typed on TensorRT >= 10.12) -> OnnxParser.parse
    (every parser error reported) -> optimization profile (min/opt/max of the
    dynamic batch) -> builder config (workspace pool limit, FP16/BF16 flags
    where the network is not strongly typed, timing cache loaded and saved)
    -> build_serialized_network -> plan file

and runs engines with set_input_shape / set_tensor_address / execute_async_v3
on a CUDA stream (device buffers are CUDA torch tensors, so this needs a
CUDA build of PyTorch next to TensorRT).

Engines only work on the GPU model and TensorRT version they were built
with; the cache key is sha256(ONNX bytes) + TensorRT version + GPU name (+ the
build settings), stored next to the plan in ``<engine>.key.json``. A plan whose
key differs, or `force=True`, is rebuilt; otherwise it is loaded.

Nothing here imports TensorRT at module import time: `engine_cache_key`
and `read_cached_key` work everywhere, and the rest raises
`BackendUnavailable` with the reason when TensorRT or a GPU is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from jepa_wm.backends.base import BackendUnavailable, EncoderBackend, PredictorBackend
from jepa_wm.backends.onnx_export import read_manifest, sha256
from jepa_wm.core.config import ConfigError, ModelConfig

log = logging.getLogger("jepa_wm.backends.tensorrt")


@dataclass
class EngineSettings:
    """Isaac ROS TensorRT node parameters (defaults in config/backends.yaml)."""

    model_file_path: str = ""
    engine_file_path: str = ""
    force_engine_update: bool = False
    precision: str = "fp16"  # "fp32", "fp16" or "bf16"
    workspace_size: int = 1 << 30  # bytes, the builder's workspace memory pool limit
    timing_cache_path: str = ""  # default: <engine>.timing.cache
    # Dynamic batch (the planner's sample count, or frames per encoder call): min / opt / max.
    batch_min: int = 1
    batch_opt: int = 300
    batch_max: int = 512

    def __post_init__(self):
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"tensorrt precision {self.precision!r}: choose fp32, fp16 or bf16")
        if not 0 < self.batch_min <= self.batch_opt <= self.batch_max:
            raise ConfigError(f"tensorrt batch profile needs 0 < batch_min <= batch_opt <= batch_max, got "
                              f"{self.batch_min}/{self.batch_opt}/{self.batch_max}")
        if self.workspace_size <= 0:
            raise ConfigError(f"tensorrt workspace_size {self.workspace_size}: give a number of bytes > 0")


def engine_cache_key(onnx_path, trt_version: str, gpu_name: str, settings: EngineSettings | None = None) -> str:
    """Identity of an engine: the ONNX bytes, the TensorRT version, the GPU model and the build settings."""
    s = settings or EngineSettings()
    parts = {
        "onnx_sha256": sha256(onnx_path),
        "tensorrt": str(trt_version),
        "gpu": str(gpu_name),
        "precision": s.precision,
        "profile": [s.batch_min, s.batch_opt, s.batch_max],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def key_path(engine_path) -> Path:
    return Path(str(engine_path) + ".key.json")


def read_cached_key(engine_path) -> str | None:
    p = key_path(engine_path)
    try:
        return json.loads(p.read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def import_tensorrt():
    """The tensorrt module and the GPU name, or BackendUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"tensorrt unavailable: {e}") from e
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"tensorrt unavailable: no CUDA GPU visible to PyTorch (torch {torch.__version__}); "
            "TensorRT engines need an NVIDIA GPU and a CUDA build of PyTorch"
        )
    return trt, torch.cuda.get_device_name()


def _version_tuple(v: str):
    return tuple(int(x) for x in v.split(".")[:2] if x.isdigit())


def build_engine(onnx_path, engine_path, settings: EngineSettings | None = None, force: bool = False,
                 input_shapes: dict | None = None) -> dict:
    """Build the plan for onnx_path into engine_path unless a plan with the same cache key exists.

    input_shapes: {input name: shape with -1 for the batch dim} from the manifest; every
    input with a dynamic dim gets min/opt/max from settings.batch_*. Returns
    {"engine", "key", "rebuilt", "reason"}.
    """
    s = settings or EngineSettings()
    trt, gpu = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} not found")
    key = engine_cache_key(onnx_path, trt.__version__, gpu, s)
    cached = read_cached_key(engine_path)
    if not (force or s.force_engine_update) and engine_path.is_file() and cached == key:
        return {"engine": str(engine_path), "key": key, "rebuilt": False, "reason": "cache hit"}
    reason = ("forced" if force or s.force_engine_update else "no engine" if not engine_path.is_file()
              else "key changed (ONNX, TensorRT version, GPU or settings)")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = _version_tuple(trt.__version__) >= (10, 12)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path.parent)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(s.workspace_size))
    if strongly_typed:
        # A strongly typed network takes its precision from the ONNX tensor types: export an fp16/bf16
        # graph for reduced precision; the precision flags are not allowed (and not needed) here.
        if s.precision != "fp32":
            log.warning("TensorRT %s builds strongly typed networks: precision %s comes from the ONNX types",
                        trt.__version__, s.precision)
    elif s.precision == "fp16":
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; building fp32")
        else:
            config.set_flag(trt.BuilderFlag.FP16)
    elif s.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape):
            if input_shapes and inp.name in input_shapes:
                shape = [d if d >= 0 else -1 for d in (input_shapes[inp.name])]
            lo = [s.batch_min if d < 0 else d for d in shape]
            opt = [s.batch_opt if d < 0 else d for d in shape]
            hi = [s.batch_max if d < 0 else d for d in shape]
            profile.set_shape(inp.name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_file = Path(s.timing_cache_path or str(engine_path) + ".timing.cache")
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(engine_path)
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    key_path(engine_path).write_text(json.dumps({
        "key": key, "onnx": str(onnx_path), "onnx_sha256": sha256(onnx_path), "tensorrt": trt.__version__,
        "gpu": gpu, "settings": asdict(s),
    }, indent=2))
    return {"engine": str(engine_path), "key": key, "rebuilt": True, "reason": reason}


class TrtRunner:
    """One deserialised engine; `run(**inputs)` -> dict of outputs as CPU float32 torch tensors."""

    def __init__(self, engine_path):
        trt, _ = import_tensorrt()
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialise TensorRT engine {engine_path}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def _dtype(self, name):
        trt = self.trt
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                trt.int64: torch.int64}.get(self.engine.get_tensor_dtype(name), torch.float32)

    def run(self, **inputs):
        keep = []
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                t = torch.as_tensor(inputs[name]).to("cuda", self._dtype(name), non_blocking=True).contiguous()
                keep.append(t)
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    # Outside the engine's optimisation profile: TensorRT returns False and would run garbage.
                    lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
                    raise RuntimeError(f"TensorRT engine input '{name}' has shape {tuple(t.shape)}, outside its "
                                       f"profile {tuple(lo)}..{tuple(hi)}: widen tensorrt batch_min/batch_max in "
                                       f"config/backends.yaml (the engine is rebuilt on the next start)")
                self.context.set_tensor_address(name, t.data_ptr())
            outs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return {k: v.float().cpu() for k, v in outs.items()}


def ensure_engines(onnx_dir, engine_dir, settings: EngineSettings | None = None, force: bool = False,
                   names=("encoder", "rollout")) -> dict:
    """Build or reuse one engine per exported graph; returns {name: build_engine result}."""
    manifest = read_manifest(onnx_dir)
    out = {}
    for name in names:
        onnx_path = Path(onnx_dir) / manifest["files"][name]
        shapes = {k: [-1 if isinstance(d, str) else d for d in v] for k, v in manifest["inputs"][name].items()}
        out[name] = build_engine(onnx_path, Path(engine_dir) / f"{name}.plan", settings, force, shapes)
    return out


class TrtEncoder(EncoderBackend):
    name = "tensorrt"

    def __init__(self, onnx_dir, engine_dir=None, settings: EngineSettings | None = None):
        manifest = read_manifest(onnx_dir)
        super().__init__(ModelConfig.from_dict(manifest["model_config"]))
        s = settings or EngineSettings()
        self.precision = s.precision
        built = ensure_engines(onnx_dir, engine_dir or onnx_dir, s, names=("encoder",))
        self.runner = TrtRunner(built["encoder"]["engine"])

    def encode_pixels(self, pixels):
        return self.runner.run(pixels=pixels)["latent"]


class TrtPredictor(PredictorBackend):
    name = "tensorrt"

    def __init__(self, onnx_dir, engine_dir=None, settings: EngineSettings | None = None):
        manifest = read_manifest(onnx_dir)
        super().__init__(ModelConfig.from_dict(manifest["model_config"]))
        s = settings or EngineSettings()
        self.precision, self.horizon = s.precision, manifest["horizon"]
        self.verified = manifest.get("verified")  # the check's record, False (--no-verify), None (not recorded)
        built = ensure_engines(onnx_dir, engine_dir or onnx_dir, s, names=("rollout",))
        self.runner = TrtRunner(built["rollout"]["engine"])

    def rollout(self, history, history_actions, plan_actions, prefix=None):
        if plan_actions.shape[1] != self.horizon:
            raise ValueError(f"the engine was built for horizon {self.horizon}, got {plan_actions.shape[1]}")
        if history.shape[1] != self.cfg.history:
            # The graph's history length is fixed at export; the planner node waits for a full history.
            raise ValueError(f"the engine takes a history of {self.cfg.history} latents, got {history.shape[1]}")
        return self.runner.run(history=history, history_actions=history_actions, plan_actions=plan_actions)["latents"]
