"""What every evaluation needs: the shipped model, the simulator it was trained in, the deployed planner settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from jepa_wm.core.config import PlannerConfig
from jepa_wm.resources import config_file, model_file

PLANNER_KEYS = ("samples", "iterations", "warm_iterations", "elites", "horizon", "cost", "joint_weight")


def default_model_path() -> Path:
    return model_file("sim.safetensors")


def node_parameters(node: str, path=None) -> dict:
    """A node's parameters from its file in config/ (`config/<node>.yaml` unless `path` is given)."""
    path = Path(path) if path else config_file(f"{node}.yaml")
    return yaml.safe_load(path.read_text())[node]["ros__parameters"]


def planner_config(path=None, **overrides) -> PlannerConfig:
    """CEM settings from the planner node's parameter file, so evaluation plans exactly as deployment does."""
    params = node_parameters("planner", path)
    return PlannerConfig(**{k: params[k] for k in PLANNER_KEYS if k in params}, **overrides)


def deployed_checks():
    """The model-free checks as deployed: the monitor's frozen-frame check and the gate's stuck-joint check
    (None where config/monitor.yaml or config/gate.yaml turns one off)."""
    from jepa_wm.core.checks import FrozenFrameCheck, StuckJointCheck

    motion = node_parameters("surprise_monitor", config_file("monitor.yaml"))["frozen_frame_motion"]
    gate = node_parameters("command_gate", config_file("gate.yaml"))
    return (FrozenFrameCheck(motion) if motion > 0 else None,
            StuckJointCheck(gate["stuck_joint_lead"], gate["stuck_joint_still"], gate["stuck_joint_steps"])
            if gate["stuck_joint_lead"] > 0 else None)


def make_sim(meta: dict, **overrides):
    """The simulator a checkpoint was trained in (its data section names scene and image size)."""
    from jepa_wm.sim.arm import ArmSim, SimConfig

    sim_meta = dict(meta.get("sim", {}))
    if not sim_meta.get("joint_names") and meta.get("joint_names"):
        # The model's action order (data.joint_names may reorder or pick the scene's joints), not the scene's.
        sim_meta["joint_names"] = list(meta["joint_names"])
    sim_meta.update(overrides)
    return ArmSim(SimConfig(**sim_meta))
