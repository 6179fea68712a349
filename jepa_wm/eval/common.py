"""What every evaluation needs: the shipped model, the simulator it was trained in, the deployed planner settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from jepa_wm.core.config import PlannerConfig
from jepa_wm.resources import config_file, model_file

PLANNER_KEYS = ("samples", "iterations", "warm_iterations", "elites", "horizon", "cost", "joint_weight")


def default_model_path() -> Path:
    return model_file("sim.safetensors")


def planner_config(path=None, **overrides) -> PlannerConfig:
    """CEM settings from the planner node's parameter file, so evaluation plans exactly as deployment does."""
    path = Path(path) if path else config_file("planner.yaml")
    params = yaml.safe_load(path.read_text())["planner"]["ros__parameters"]
    return PlannerConfig(**{k: params[k] for k in PLANNER_KEYS if k in params}, **overrides)


def make_sim(meta: dict, **overrides):
    """The simulator a checkpoint was trained in (its data section names scene and image size)."""
    from jepa_wm.sim.arm import ArmSim, SimConfig

    sim_meta = dict(meta.get("sim", {}))
    sim_meta.update(overrides)
    return ArmSim(SimConfig(**sim_meta))
