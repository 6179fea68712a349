"""ONNX export of the encoder and the predictor, with a manifest that records what was exported.

Three graphs, all with a dynamic batch dimension:

- ``encoder.onnx``: pixels (B, 3, S, S) float in [-1, 1] -> latent (B, D).
  Resizing and uint8 conversion stay outside (``core.model.preprocess``),
  shared by every backend.
- ``predictor.onnx``: the teacher-forced ``predict(latents, actions)``,
  dynamic batch and time: (B, T, D), (B, T, A) -> (B, T, D).
- ``rollout.onnx``: what the planner runs. One call imagines a whole CEM
  iteration: history (1, H, D), history_actions (1, H-1, A), plan_actions
  (S, N, A) -> latents (S, N, D), dynamic S (the sample count). The KV-cached
  rollout is unrolled over the horizon N inside the graph (N and H are fixed at
  export time and written in the manifest), so keys and values never cross the
  runtime boundary and the planner makes one runtime call per iteration. The
  alternatives cost more: driving ``predictor.onnx`` step by step recomputes the
  whole sequence (3+4+...+7 = 25 tokens per candidate instead of 5 at H=3, N=5),
  and a single-step graph with explicit KV inputs/outputs copies the growing
  cache in and out N times per iteration and pays N calls' overhead.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

MANIFEST = "manifest.json"
OPSET = 18


class EncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model.encode(pixels)


class PredictGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents, actions):
        return self.model.predict(latents, actions)


class RolloutGraph(nn.Module):
    """The KV-cached rollout written with the model's own cache path (concatenated keys and
    values), which traces to a clean graph with a symbolic sample count; the eager fast
    path (`Predictor.rollout_steps`) writes into preallocated buffers, which ONNX does not need."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, history, history_actions, plan_actions):
        m = self.model
        S, N = plan_actions.shape[0], plan_actions.shape[1]
        cache = m.observe(history, history_actions)
        if cache.k[0] is not None:
            cache.expand(S)
        z = history[:, -1:].expand(S, -1, -1)
        out = []
        for n in range(N):
            z = m.pred_projector(m.predictor(z, plan_actions[:, n:n + 1], cache))
            out.append(z)
        return torch.cat(out, dim=1)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export(module, args, path, input_names, output_names, dynamic_axes):
    module.eval()  # a fresh wrapper is in training mode, and the exporter restores that mode recursively
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


@torch.no_grad()
def export_onnx(model, out_dir, horizon: int = 5, check: bool = True, checkpoint=None, publish: bool = True) -> dict:
    """Write encoder.onnx, predictor.onnx, rollout.onnx and manifest.json into out_dir; returns the manifest.

    checkpoint: the file `model` was loaded from; its sha256 goes into the manifest so that a backend
    made for another checkpoint (a fine-tune) refuses this export instead of running stale weights.
    publish=False leaves manifest.json unwritten: the caller verifies the graphs first (`jepa-wm export`),
    records the outcome in manifest["verified"] and calls write_manifest. Published here, "verified" is false.
    """
    import onnx

    cfg = model.cfg
    model = model.float().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and comes back last: an interrupted re-export leaves no manifest (no backend
    # uses the directory), never the old one describing another checkpoint beside some new graphs.
    (out / MANIFEST).unlink(missing_ok=True)
    H, D, A = cfg.history, cfg.latent_dim, cfg.action_block
    g = torch.Generator().manual_seed(0)
    files = {}

    pixels = torch.rand(2, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    _export(EncoderGraph(model), (pixels,), out / "encoder.onnx", ["pixels"], ["latent"],
            {"pixels": {0: "batch"}, "latent": {0: "batch"}})
    files["encoder"] = "encoder.onnx"

    lat, act = torch.randn(2, H + 1, D, generator=g), torch.randn(2, H + 1, A, generator=g)
    _export(PredictGraph(model), (lat, act), out / "predictor.onnx", ["latents", "actions"], ["predictions"],
            {"latents": {0: "batch", 1: "time"}, "actions": {0: "batch", 1: "time"}, "predictions": {0: "batch", 1: "time"}})
    files["predictor"] = "predictor.onnx"

    hist, hist_a = torch.randn(1, H, D, generator=g), torch.randn(1, H - 1, A, generator=g)
    plan = torch.randn(4, horizon, A, generator=g)
    # With history 1 the (1, 0, A) history_actions is unused and the exporter drops it from the graph:
    # the manifest lists only the inputs the graph has, and the runtimes feed only those.
    _export(RolloutGraph(model), (hist, hist_a, plan), out / "rollout.onnx",
            ["history", "history_actions", "plan_actions"], ["latents"],
            {"plan_actions": {0: "samples"}, "latents": {0: "samples"}})
    files["rollout"] = "rollout.onnx"

    if check:
        for name in files.values():
            onnx.checker.check_model(str(out / name))
    manifest = {
        "format": "jepa_wm.onnx.v1",
        "opset": OPSET,
        "model_config": cfg.to_dict(),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": sha256(checkpoint) if checkpoint else None,
        "horizon": horizon,
        "history": H,
        "files": files,
        "verified": False,  # jepa-wm export replaces it with the measured errors once they pass
        "sha256": {k: sha256(out / v) for k, v in files.items()},
        "inputs": {
            "encoder": {"pixels": ["batch", 3, cfg.image_size, cfg.image_size]},
            "predictor": {"latents": ["batch", "time", D], "actions": ["batch", "time", A]},
            "rollout": {"history": [1, H, D], "history_actions": [1, H - 1, A], "plan_actions": ["samples", horizon, A]},
        },
    }
    graph_inputs = {i.name for i in onnx.load(str(out / files["rollout"]), load_external_data=False).graph.input}
    manifest["inputs"]["rollout"] = {k: v for k, v in manifest["inputs"]["rollout"].items() if k in graph_inputs}
    if publish:
        write_manifest(out, manifest)
    return manifest


def write_manifest(out_dir, manifest: dict) -> None:
    """manifest.json, written whole or not at all (a reader never sees half a file)."""
    path = Path(out_dir) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)


def check_manifest(manifest: dict, onnx_dir, checkpoint=None, model_cfg=None, horizon=None) -> None:
    """Raise ValueError with the reason when the export at onnx_dir does not fit what the planner runs.

    checkpoint: the checkpoint file the caller loaded (its sha256 must be the exported one);
    model_cfg: its ModelConfig (history and shapes); horizon: the planner's horizon.
    Each None skips its check.
    """
    fix = f"re-export with `jepa-wm export --model {checkpoint or 'CKPT'} --out {onnx_dir}`"
    if checkpoint is not None:
        want, have = sha256(checkpoint), manifest.get("checkpoint_sha256")
        if have is None:
            raise ValueError(f"{onnx_dir} records no checkpoint sha256, so it may not be {checkpoint} "
                             f"(sha256 {want[:12]}): {fix}")
        if have != want:
            raise ValueError(f"{onnx_dir} was exported from {manifest.get('checkpoint')} (sha256 {have[:12]}), "
                             f"not {checkpoint} (sha256 {want[:12]}): {fix}")
    if model_cfg is not None:
        mine = json.loads(json.dumps(model_cfg.to_dict()))  # as the manifest stores it (tuples -> lists)
        theirs = manifest.get("model_config", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"{onnx_dir} was exported from a model with another config "
                             f"({', '.join(f'{k} {theirs.get(k)!r} vs {mine.get(k)!r}' for k in diff)}): {fix}")
        if manifest.get("history") != model_cfg.history:
            raise ValueError(f"{onnx_dir} rollout was exported for history {manifest.get('history')}, "
                             f"the model has {model_cfg.history}: {fix}")
    if horizon is not None and manifest.get("horizon") != horizon:
        raise ValueError(f"{onnx_dir} rollout was exported for horizon {manifest.get('horizon')}, "
                         f"the planner plans {horizon}: {fix[:-1]} --horizon {horizon}`")


def check_files(manifest: dict, onnx_dir) -> None:
    """Raise ValueError naming the first graph whose bytes are not the exported ones (a flipped byte, a
    truncated copy, a graph from another export): ONNX Runtime would run a changed graph without a word."""
    for name, fname in manifest["files"].items():
        path = Path(onnx_dir) / fname
        want = manifest["sha256"].get(name)
        if not path.is_file():
            raise ValueError(f"{path} is missing: re-export with `jepa-wm export --out {onnx_dir}`")
        if sha256(path) != want:
            raise ValueError(f"{path} does not match the sha256 in {Path(onnx_dir) / MANIFEST} (changed or damaged "
                             f"since the export): re-export with `jepa-wm export --out {onnx_dir}`")


_REQUIRED = {"files": dict, "sha256": dict, "model_config": dict, "horizon": int, "history": int, "inputs": dict}


def read_manifest(onnx_dir) -> dict:
    """The manifest of the export in onnx_dir; a damaged one raises BackendUnavailable naming the file."""
    from jepa_wm.backends.base import BackendUnavailable

    path = Path(onnx_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `jepa-wm export --model CKPT --out {onnx_dir}` first")
    fix = f"re-export with `jepa-wm export --model CKPT --out {onnx_dir}`"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BackendUnavailable(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(manifest, dict):
        raise BackendUnavailable(f"{path} holds a {type(manifest).__name__}, not a manifest object: {fix}")
    bad = [k for k, kind in _REQUIRED.items() if not isinstance(manifest.get(k), kind)]
    if bad:
        raise BackendUnavailable(f"{path} lacks {', '.join(bad)} (or has the wrong type): {fix}")
    return manifest
