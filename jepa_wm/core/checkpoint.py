"""Checkpoints: weights in safetensors (no pickle), the model config and metadata as JSON inside.

Loading rebuilds the model from the config stored in the file, so every
consumer (planner, monitor, export) agrees on the architecture. A file that
is corrupt, not a jepa_wm checkpoint, or built for another configuration is
refused with a message naming the path and both sides of any mismatch.
Writes are atomic: an interrupted save never destroys the previous file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from jepa_wm.core.config import ConfigError, ModelConfig
from jepa_wm.core.model import WorldModel

FORMAT = "jepa_wm.checkpoint.v1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and why."""


def save_checkpoint(path, model: WorldModel, meta: dict | None = None) -> Path:
    """Write weights + config + JSON-serialisable `meta` (metrics, calibration, lineage) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "model_config": model.cfg.to_dict(), "meta": meta or {}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"jepa_wm": json.dumps(header)})
        # safetensors creates it owner-only (0600); nodes run as another user must read it: the umask decides,
        # as for every other file a run writes.
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save leaves neither a half file nor litter beside the old one
        raise
    return path


def read_header(path) -> dict:
    """The config and metadata of a checkpoint, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file: {e}") from e
    if "jepa_wm" not in metadata:
        raise CheckpointError(f"checkpoint {path} is a safetensors file but not a jepa_wm checkpoint (no jepa_wm header)")
    try:
        header = json.loads(metadata["jepa_wm"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt jepa_wm header: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}; this jepa_wm reads {FORMAT!r}")
    missing = [k for k in ("model_config", "meta") if not isinstance(header.get(k), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has a jepa_wm header without {' or '.join(missing)}")
    return header


def load_checkpoint(path, expected_config: ModelConfig | None = None, map_location="cpu"):
    """Rebuild the model stored in `path`; returns (model in eval mode, meta dict)."""
    header = read_header(path)
    try:
        cfg = ModelConfig.from_dict(header["model_config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} carries an invalid model config: {e}") from e
    if expected_config is not None and cfg != expected_config:
        diffs = "; ".join(f"{k}: checkpoint {a} vs expected {b}" for k, a, b in _diff(cfg, expected_config))
        raise CheckpointError(f"checkpoint {path} does not match the expected model config ({diffs})")
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from e
    model = WorldModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} weights do not fit its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state)
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path} has non-finite values in {name}")
    return model.to(map_location).eval(), header["meta"]


def require_position_actions(meta: dict, path) -> None:
    """Refuse a model whose actions are not joint position commands: the planner sends positions.

    `data.action_type: delta` (joint-state differences) serves bags without recorded commands; such a
    model predicts, but planning with it would send its deltas to the arm as positions.
    """
    kind = (meta.get("data") or {}).get("action_type", "command")
    if kind != "command":
        raise CheckpointError(f"checkpoint {path} was trained with data.action_type {kind!r}, but planning "
                              "commands joint positions: train on bags with recorded commands (action_type 'command')")


def _diff(a: ModelConfig, b: ModelConfig):
    da, db = a.to_dict(), b.to_dict()
    return [(k, da[k], db[k]) for k in da if da[k] != db[k]]
