"""What every evaluation needs: the shipped model, the simulator it was trained in, the deployed planner settings."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from jepa_wm.core.config import ConfigError, PlannerConfig, check_types
from jepa_wm.resources import config_file, model_file

PLANNER_KEYS = ("samples", "iterations", "warm_iterations", "elites", "horizon", "cost", "joint_weight")


def default_model_path() -> Path:
    return model_file("sim.safetensors")


def node_parameters(node: str, path=None, flag: str = "--planner-config") -> dict:
    """A node's parameters as the node would see them: `config/<node>.yaml`, overlaid with `path` if given.

    The shipped file holds every declared parameter at its declared default, so a user's file may hold any
    subset of its keys and the rest keep those defaults, as in the node. A key the shipped file lacks is a
    typo that would silently leave the default in force, so it is refused, as is a file without the node's
    section. `flag` is the option that named `path`, for the messages.
    """
    shipped = config_file(f"{node}.yaml")
    if not path:
        return _read_parameters(node, shipped, str(shipped))
    path = Path(path)
    where = f"{flag} {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    params = _read_parameters(node, path, where)
    known = _read_parameters(node, shipped, str(shipped))
    unknown = sorted(set(params) - set(known))
    if unknown:
        hints = [f"{k!r} -> {m[0]!r}" for k in unknown if (m := difflib.get_close_matches(k, known, 1))]
        raise ConfigError(f"{where}: unknown key(s) {unknown} under {node}.ros__parameters"
                          + (f" (did you mean {', '.join(hints)}?)" if hints else "")
                          + f"; valid keys are those of {shipped}: {sorted(known)}")
    return {**known, **params}


def _read_parameters(node: str, path: Path, where: str) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from None
    section = doc.get(node) if isinstance(doc, dict) else None
    params = section.get("ros__parameters") if isinstance(section, dict) else None
    if not isinstance(params, dict):
        sections = sorted(doc) if isinstance(doc, dict) else []
        raise ConfigError(f"{where}: no '{node}: ros__parameters:' section (top-level keys: {sections or 'none'}); "
                          f"see config/{node}.yaml for the layout")
    return params


def planner_config(path=None, **overrides) -> PlannerConfig:
    """CEM settings from the planner node's parameter file, so evaluation plans exactly as deployment does."""
    params = node_parameters("planner", path)
    chosen = {k: params[k] for k in PLANNER_KEYS if k in params}
    where = f"--planner-config {path}" if path else config_file("planner.yaml")
    # The ROS node would refuse a value of the wrong type; PlannerConfig alone would fail mid-plan.
    check_types(PlannerConfig, chosen, f"{where}: planner.ros__parameters")
    return PlannerConfig(**chosen, **overrides)


def deployed_checks():
    """The model-free checks as deployed: the monitor's frozen-frame check and the gate's stuck-joint check
    (None where config/monitor.yaml or config/gate.yaml turns one off)."""
    from jepa_wm.core.checks import FrozenFrameCheck, StuckJointCheck

    monitor, gate = config_file("monitor.yaml"), config_file("gate.yaml")
    motion = _read_parameters("surprise_monitor", monitor, str(monitor))["frozen_frame_motion"]
    gate = _read_parameters("command_gate", gate, str(gate))
    return (FrozenFrameCheck(motion) if motion > 0 else None,
            StuckJointCheck(gate["stuck_joint_lead"], gate["stuck_joint_still"], gate["stuck_joint_steps"])
            if gate["stuck_joint_lead"] > 0 else None)


def sim_settings(meta: dict, checkpoint=None) -> dict:
    """The SimConfig fields of the simulator a checkpoint was trained in: its meta["sim"] (collect's settings) and
    the model's action order. Its scene must be there: refused, naming the checkpoint (`checkpoint`, the path it was
    read from), if the file is gone."""
    from jepa_wm.sim.arm import scene_path

    settings = dict(meta.get("sim", {}))
    if meta.get("joint_names"):
        # The model's action order (data.joint_names may reorder or pick the joints collect recorded), not collect's.
        settings["joint_names"] = list(meta["joint_names"])
    scene = settings.get("scene", "builtin")
    try:
        scene_path(scene)
    except OSError as e:
        where = f"checkpoint {checkpoint}" if checkpoint else "the checkpoint"
        what = "is a directory" if isinstance(e, IsADirectoryError) else "does not exist"
        hint = "" if Path(scene).expanduser().is_absolute() else (
            f" (a relative path, read from the current directory {Path.cwd()}: run from the directory `jepa-wm "
            "collect` ran in)")
        raise ConfigError(f"{where} names sim.scene {scene}, the scene its training data was collected in, and that "
                          f"{what}{hint}") from None
    return settings


def make_sim(meta: dict, checkpoint=None, **overrides):
    """The simulator a checkpoint was trained in (see sim_settings), with `overrides` (a changed robot)."""
    from jepa_wm.sim.arm import ArmSim, SimConfig

    return ArmSim(SimConfig(**{**sim_settings(meta, checkpoint), **overrides}))
