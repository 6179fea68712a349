"""Model and planner configuration: plain dataclasses that travel inside checkpoints.

A checkpoint stores `ModelConfig.to_dict()`; loading rebuilds the model from
it, so the history length, frameskip and sizes always come from the
checkpoint, never from a hard-coded default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def dataclass_from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from `data`, refusing unknown keys with the list of valid ones and values of another
    type than the field's."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    check_types(cls, data, where)
    return cls(**data)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _conforms(value, kind) -> bool:
    if kind is float:  # an integer is a number; true and false are not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value)
    return isinstance(value, origin or kind)


def check_types(cls, data: dict, where: str):
    """Refuse a value that is not of its field's annotated type, naming the key: YAML reads `lr: 1e-3` as the
    string '1e-3', and `freeze_encoder: "no"` would be a true string, not false."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _conforms(value, hints[key]):
            hint = ""
            if hints[key] is float and isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", value):
                hint = " (YAML reads an exponent as a number only with a dot and a sign, like 1.0e-3)"
            elif hints[key] is str and isinstance(value, bool):
                hint = " (YAML reads an unquoted off, no, on or yes as false or true: quote it)"
            raise ConfigError(f"{where}: {key} must be {_TYPE_NAMES.get(hints[key], hints[key])}, got {value!r}{hint}")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the encoder, projector and action-conditioned predictor."""

    # Encoder over image_size x image_size RGB: "vit" (CLS token) or "conv" (spatial soft-argmax keypoints).
    encoder: str = "vit"
    image_size: int = 64
    patch_size: int = 8
    enc_dim: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    enc_mlp_dim: int = 512
    # Projector (after the encoder and after the predictor): Linear-BN-GELU-Linear.
    latent_dim: int = 64
    proj_hidden: int = 512
    # Predictor: time-causal transformer, actions condition every block (AdaLN-zero).
    pred_dim: int = 128
    pred_depth: int = 4
    pred_heads: int = 4
    pred_head_dim: int = 32
    pred_mlp_dim: int = 512
    dropout: float = 0.1
    # Actions: action_dim values per environment step, frameskip steps per latent step.
    action_dim: int = 3
    frameskip: int = 1
    # Observed latents the planner conditions on; training clips are history + train_preds long.
    history: int = 3
    train_preds: int = 4

    def __post_init__(self):
        check_types(ModelConfig, dataclasses.asdict(self), "model config")  # preset() builds past dataclass_from_dict
        positive = [f.name for f in dataclasses.fields(self) if f.type == "int"]
        bad = [n for n in positive if getattr(self, n) <= 0]
        if bad:
            raise ConfigError(f"ModelConfig: {', '.join(bad)} must be positive")
        if self.encoder not in ("vit", "conv"):
            raise ConfigError(f"ModelConfig: encoder {self.encoder!r} must be 'vit' or 'conv'")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"ModelConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.enc_dim % self.enc_heads:
            raise ConfigError(f"ModelConfig: enc_dim {self.enc_dim} is not divisible by enc_heads {self.enc_heads}")
        if self.pred_head_dim % 2:
            raise ConfigError("ModelConfig: pred_head_dim must be even (rotary time positions)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig: dropout {self.dropout} must be in [0, 1)")

    @property
    def action_block(self) -> int:
        """Width of one predictor action: the frameskip env actions concatenated."""
        return self.action_dim * self.frameskip

    @property
    def clip_len(self) -> int:
        return self.history + self.train_preds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return dataclass_from_dict(cls, data, "model config")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    # Unit tests on a CPU: runs a training step in milliseconds.
    "tiny": ModelConfig(
        image_size=32, patch_size=8, enc_dim=32, enc_depth=2, enc_heads=2, enc_mlp_dim=64,
        latent_dim=16, proj_hidden=64, pred_dim=32, pred_depth=2, pred_heads=2, pred_head_dim=16,
        pred_mlp_dim=64, dropout=0.0,
    ),
    # The embedded simulator's model: trains in minutes on 2 CPU cores. A ViT's CLS latent
    # learned only the base yaw here; spatial soft-argmax keypoints learn every joint.
    "sim": ModelConfig(encoder="conv", enc_dim=128),
    # LeWorldModel's published sizes (ViT-tiny 224/14, 6-block predictor of width 192).
    "lewm": ModelConfig(
        image_size=224, patch_size=14, enc_dim=192, enc_depth=12, enc_heads=3, enc_mlp_dim=768,
        latent_dim=192, proj_hidden=2048, pred_dim=192, pred_depth=6, pred_heads=16, pred_head_dim=64,
        pred_mlp_dim=2048, dropout=0.1, action_dim=2, frameskip=5, history=3, train_preds=1,
    ),
}


@dataclass
class PlannerConfig:
    """Cross-Entropy Method settings (defaults: LeWorldModel's, see world-models.md)."""

    samples: int = 300
    iterations: int = 30
    elites: int = 30
    horizon: int = 5
    cost: str = "l2"  # "l2": squared L2 to the goal latent; "l1": mean absolute error
    init_std: float = 1.0
    min_std: float = 0.05
    max_std: float = 2.0
    # Iterations when warm-started from the previous solution (receding horizon).
    warm_iterations: int = 5
    # Keep this fraction of the previous std when warm-starting (the rest is re-inflated to init_std).
    warm_std: float = 0.5
    dtype: str = "float32"  # "float32" or "bfloat16" for the predictor rollouts
    # Weight of the joint-probe term of the goal cost (core/planner.py: JointMetric); 0 = latent distance only.
    joint_weight: float = 0.0

    def __post_init__(self):
        if self.cost not in ("l2", "l1"):
            raise ConfigError(f"planner cost {self.cost!r} must be 'l2' or 'l1'")
        if not self.joint_weight >= 0:
            raise ConfigError(f"planner joint_weight ({self.joint_weight}) must be >= 0")
        if not 2 <= self.elites <= self.samples:
            raise ConfigError(f"planner elites ({self.elites}) must be in 2..samples ({self.samples})")
        for name in ("samples", "iterations", "horizon", "warm_iterations"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"planner {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_std <= self.max_std:
            raise ConfigError(f"planner needs 0 < min_std ({self.min_std}) <= max_std ({self.max_std})")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"planner dtype {self.dtype!r} must be 'float32' or 'bfloat16'")

    @classmethod
    def from_dict(cls, data: dict) -> "PlannerConfig":
        return dataclass_from_dict(cls, data, "planner config")
