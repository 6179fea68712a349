"""From episodes to a deployable checkpoint: split, fit action statistics, train, fit the planner's joint
probe, calibrate surprise.

`jepa-wm train` and `jepa-wm finetune` are both this function; fine-tuning
starts from a parent checkpoint and freezes the encoder.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from jepa_wm.backends.onnx_export import sha256
from jepa_wm.core.checkpoint import load_checkpoint, read_header, save_checkpoint
from jepa_wm.core.config import ConfigError, ModelConfig, dataclass_from_dict
from jepa_wm.core.model import build_model
from jepa_wm.core.planner import JointMetric
from jepa_wm.core.surprise import MIN_NOMINAL_FRAMES
from jepa_wm.data.dataset import ClipDataset, DataConfig, action_stats, checkpoint_data_config, split_episodes
from jepa_wm.resources import config_file
from jepa_wm.train.calibration import calibrate_model, encode_frames, scored_frames
from jepa_wm.train.trainer import TrainConfig, is_main_process, train


def load_config(path=None) -> dict:
    """The training YAML (model / data / train / calibration sections); default: the shipped config/train.yaml."""
    path = Path(path) if path else config_file("train.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"training config {path} is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"training config {path} must be a mapping of sections, got {type(config).__name__}")
    return config


SECTIONS = ("model", "data", "val_fraction", "train", "finetune", "calibration")
CALIBRATION_KEYS = ("quantile", "margin", "consecutive", "whiten")


def check_config(config: dict):
    """Refuse keys the training config does not have (a misspelled section would silently keep its defaults)."""
    for name in ("model", "data", "train", "finetune", "calibration"):
        if not isinstance(config.get(name) or {}, dict):
            raise ConfigError(f"training config: section {name!r} must be a mapping of keys, "
                              f"got {config[name]!r}")
    for where, section, known in (("training config", config, SECTIONS),
                                  ("calibration", config.get("calibration") or {}, CALIBRATION_KEYS)):
        if unknown := sorted(set(section) - set(known)):
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    vf = config.get("val_fraction", 0.1)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf <= 1:
        raise ConfigError(f"training config: val_fraction must be a number in [0, 1], got {vf!r}")
    calibration_settings(config.get("calibration"))


CALIBRATION_DEFAULTS = {"quantile": 0.999, "margin": 1.5, "consecutive": 2, "whiten": False}


def calibration_settings(section: dict | None) -> dict:
    """The calibration section with its defaults filled in, each value checked (a bad one would fail only after
    training, or name a derived threshold instead of the key)."""
    settings = {**CALIBRATION_DEFAULTS, **(section or {})}
    q, m, c, w = (settings[k] for k in ("quantile", "margin", "consecutive", "whiten"))

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for ok, key, what in ((number(q) and 0 <= q <= 1, "quantile", "a number in [0, 1]"),
                          (number(m) and 0 < m < float("inf"), "margin", "a finite number > 0"),
                          (isinstance(c, int) and not isinstance(c, bool) and c >= 1, "consecutive",
                           "an integer >= 1"),
                          (isinstance(w, bool), "whiten", "true or false")):
        if not ok:
            raise ConfigError(f"calibration.{key} must be {what}, got {settings[key]!r}")
    return settings


def model_config(section: dict, **overrides) -> ModelConfig:
    section = {**(section or {}), **overrides}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown := sorted(set(section) - known - {"preset"}):
        raise ConfigError(f"model config: unknown key(s) {unknown}; valid keys are {sorted(known | {'preset'})}")
    return ModelConfig.preset(section.pop("preset", "sim"), **section)


def check_frame_size(size: int, cfg: ModelConfig, parent=None):
    """Refuse frames of another size than the model's input: the model would resize them, unasked.

    Refused rather than one following the other: a preset's input size is part of its architecture (lewm's
    224 pixels in 14-pixel patches, tiny's speed), and data.image_size is what the user wrote."""
    if size == cfg.image_size:
        return
    if parent:
        raise ConfigError(f"data.image_size is {size}, but the parent {parent} takes {cfg.image_size} x "
                          f"{cfg.image_size} frames: set data.image_size {cfg.image_size}")
    raise ConfigError(f"data.image_size is {size}, but the model takes {cfg.image_size} x {cfg.image_size} "
                      f"frames: set data.image_size {cfg.image_size}, or model.image_size {size}")


# Data settings that say only where and how to read bags: a fine-tune takes them from the user's config.
READ_KEYS = ("image_topic", "joint_state_topic", "action_topic", "object_pose_topic", "frameskip", "max_gap_s",
             "stamps", "cache_dir")
# The others decide what the model's inputs mean: a fine-tune keeps the parent's. (A frameskip that changes the
# model's step is refused in fit(), from the bags' stamps.)
MEANING = {"action_type": "what its actions mean", "image_size": "its input size",
           "joint_names": "its joint order (new bags are reordered into it by name)"}


def finetune_data_config(header: dict, parent, section: dict) -> DataConfig:
    """How to read bags for fine-tuning `parent` (its checkpoint header): the parent's data settings with the
    where-and-how of the user's data `section` laid over them; a value that would change the parent's meaning
    is refused, naming both."""
    dataclass_from_dict(DataConfig, section, "data config")  # unknown keys and bad values, as train refuses them
    # Its input size is what the parent's encoder takes, whatever data.image_size it recorded.
    base = dataclasses.replace(checkpoint_data_config(header["meta"]), image_size=header["model_config"]["image_size"])
    for key, value in section.items():
        theirs = getattr(base, key)
        if key in READ_KEYS or value == theirs or (key == "joint_names" and not value):  # [] = the parent's order
            continue
        raise ConfigError(f"data.{key} is {value!r}, but the parent {parent} was trained with {theirs!r}, and a "
                          f"fine-tune keeps {MEANING.get(key, 'what its data meant')}: remove data.{key} from the "
                          "config, or train a new model")
    return dataclasses.replace(base, **{k: v for k, v in section.items() if k in READ_KEYS})


def run_identity(config: dict, episodes, parent=None) -> dict:
    """What makes a training run this run: resuming an output folder is refused when any of it differs."""
    def source(s):
        return str(Path(s).resolve()) if Path(s).exists() else s

    return in_effect({
        "parent": None if parent is None else f"{Path(parent).resolve()} (sha256 {sha256(parent)[:16]})",
        "bags": sorted({source(ep.source) for ep in episodes}),
        "data": config.get("data") or {},
        "model": config.get("model") or {},
        "val_fraction": config.get("val_fraction", 0.1),
        "train": config.get("train") or {},
    }, episodes[0].actions.shape[-1])


def in_effect(run: dict, joints: int) -> dict:
    """`run` with its model and data settings as they take effect (the robot's joint count included), so that
    writing out a default, or leaving one out, is the same run."""
    data = dataclasses.asdict(dataclass_from_dict(DataConfig, run.get("data") or {}, "data config"))
    data.pop("cache_dir")  # where frames are cached is this machine's business
    # Everything but how long and how often it logs: a run may be resumed to train longer.
    train = {k: v for k, v in dataclasses.asdict(TrainConfig.from_dict(run.get("train") or {})).items()
             if k not in ("steps", "val_every", "log_every", "workers")}
    return {**run, "data": data, "model": model_config(run.get("model"), action_dim=joints).to_dict(), "train": train}


def stored_in_effect(run: dict, joints: int) -> dict:
    """A run identity stored by an earlier version (its sections as written), as `in_effect` has it now; one whose
    settings no longer load stays as it was, and so differs."""
    try:
        return in_effect(run, joints)
    except (ConfigError, TypeError):
        return run


def collect_manifest(bag_paths) -> dict:
    """The simulator settings `jepa-wm collect` wrote next to its bags ({} for bags from a robot)."""
    for root in bag_paths or []:
        for folder in (Path(root), Path(root).parent):
            found = sorted(folder.glob("collect_*.yaml"))
            if found:
                return yaml.safe_load(found[0].read_text()) or {}
    return {}


WEAK_PROBE = 0.9  # joint probe R^2 under which the latent barely encodes a joint (the planner misses its goals)
# Object probe R^2 under which the latent has dropped the object. Lower than for joints: the arm hides the object and
# pushes carry it out of view. Models that keep the puck score 0.94 on the shipped recipe's validation episodes and
# 0.67-0.77 on 60 fresh ones; models that dropped it (surprise blind to a teleported puck) -0.05 to -0.02.
WEAK_OBJECT_PROBE = 0.5


def weak_joint_probes(metrics: dict, names) -> list[str]:
    """'name (R^2 x)' for every joint the validation probe reads worse than WEAK_PROBE."""
    names = list(names or [])
    out = []
    for key, r2 in metrics.items():
        if key.startswith("val_probe_r2_joint") and r2 < WEAK_PROBE:
            j = int(key.removeprefix("val_probe_r2_joint"))
            out.append(f"{names[j] if j < len(names) else f'joint {j}'} (R^2 {r2:.2f})")
    return out


def weak_object_probe(metrics: dict) -> str | None:
    """'the object (R^2 x)' where the validation probe reads the object worse than WEAK_OBJECT_PROBE."""
    r2 = metrics.get("val_probe_r2_object", 1.0)
    return f"the object (R^2 {r2:.2f})" if r2 < WEAK_OBJECT_PROBE else None


def weak_latent_warning(metrics: dict, names) -> str | None:
    """What a user should know about joints and an object the latent barely encodes, and what each costs."""
    weak, costs = weak_joint_probes(metrics, names), []
    if weak:
        costs.append("the planner misses goals that need a joint the latent does not encode")
    if obj := weak_object_probe(metrics):
        weak.append(obj)
        costs.append("the surprise monitor does not see an object the latent does not encode move")
    if not weak:
        return None
    return (f"warning: the latent barely encodes {', '.join(weak)}: {'; '.join(costs)}. Train longer, or, since what "
            "the latent keeps depends on the seed, again with another --seed (models/README.md)")


STEP_TOLERANCE = 0.05  # relative: a camera's rate drifts a little, a skipped frame doubles the step


def parent_step_s(parent, parent_meta: dict, step_s: float, frameskip: int) -> float:
    """The step a fine-tune keeps: the parent's, which the deployed planner's control_period and the monitor's
    prediction_dt were set to; bags whose frames (kept every `frameskip`) step otherwise are refused."""
    want = parent_meta.get("step_s")
    if want is None:  # a parent from before checkpoints recorded their step
        return step_s
    if abs(step_s - want) <= STEP_TOLERANCE * want:
        return want
    k = round(frameskip * want / step_s)
    fix = (f"set data.frameskip {k}" if k >= 1 and abs(k * step_s / frameskip - want) <= STEP_TOLERANCE * want
           else f"record the camera at {1 / want:.3g} Hz or a multiple of it")
    raise ConfigError(f"the parent {parent} steps {want:.3g} s, these bags {step_s:.3g} s (data.frameskip "
                      f"{frameskip}), and a model's step cannot change: {fix}")


def fit_joint_metric(model, episodes, max_frames: int = 3000) -> JointMetric:
    """The planner's joint probe (core/planner.py) from up to max_frames frames spread over the episodes."""
    every = max(1, sum(len(ep) for ep in episodes) // max_frames)
    latents = torch.cat([encode_frames(model, ep.frames[::every]) for ep in episodes])
    joints = torch.cat([torch.as_tensor(ep.joints[::every]) for ep in episodes])
    return JointMetric.fit(latents.float(), joints.float())


def fit(episodes, config: dict, out_dir, parent: str | None = None, sources=None) -> Path:
    """Train (or, with `parent`, fine-tune) on episodes; returns the checkpoint path."""
    out = Path(out_dir)
    check_config(config)
    tcfg = TrainConfig.from_dict(config.get("train", {}))
    cal = calibration_settings(config.get("calibration"))
    train_eps, val_eps = split_episodes(episodes, config.get("val_fraction", 0.1), tcfg.seed)
    joints = {ep.actions.shape[1] for ep in episodes}
    if len(joints) != 1:
        raise ConfigError(f"episodes disagree on the number of joints: {sorted(joints)} action values")
    joints = joints.pop()

    if parent:
        model, parent_meta = load_checkpoint(parent)
        model.train()
        if model.cfg.action_dim != joints:
            raise ConfigError(f"the parent {parent} commands {model.cfg.action_dim} joints, the bags "
                              f"{joints} ({list(episodes[0].joint_names)})")
    else:
        section = config.get("model") or {}
        if "action_dim" in section and section["action_dim"] != joints:
            raise ConfigError(f"model.action_dim is {section['action_dim']}, but the bags command {joints} joints "
                              f"({list(episodes[0].joint_names)}): remove it from the config to follow the data")
        torch.manual_seed(tcfg.seed)  # the initial weights: whether the keypoints find every joint depends on them
        model, parent_meta = build_model(model_config(section, action_dim=joints)), {}  # the robot's joint count
        mean, std = action_stats(train_eps)
        model.action_mean.copy_(torch.as_tensor(mean)), model.action_std.copy_(torch.as_tensor(std))
    cfg = model.cfg
    check_frame_size(episodes[0].frames.shape[1], cfg, parent)
    step_s = float(np.median(np.concatenate([np.diff(ep.stamps) for ep in train_eps]))) * 1e-9 * cfg.frameskip
    if parent:
        step_s = parent_step_s(parent, parent_meta, step_s, (config.get("data") or {}).get("frameskip", 1))
    train_set = ClipDataset(train_eps, cfg.clip_len, cfg.frameskip)
    span = cfg.clip_len * cfg.frameskip
    val_fraction = config.get("val_fraction", 0.1)
    if not any(len(ep) >= span for ep in val_eps):  # else the first validation fails, steps in, with nothing saved
        raise ConfigError(
            f"no validation clips: {len(episodes)} episode(s) with val_fraction {val_fraction} "
            f"leave {len(val_eps)} for validation, and a clip needs an episode of {span} frames. Record more "
            "episodes (each bag is one, or several where the camera paused longer than data.max_gap_s), or "
            "raise val_fraction")
    # The surprise calibration after training scores the validation episodes: too few frames would fail it only
    # after the whole run, leaving a model without a threshold.
    if (scored := sum(scored_frames(len(ep), cfg.frameskip) for ep in val_eps)) < MIN_NOMINAL_FRAMES:
        raise ConfigError(
            f"the surprise calibration needs at least {MIN_NOMINAL_FRAMES} scored validation frames, but the "
            f"{len(val_eps)} validation episode(s) ({', '.join(str(len(ep)) for ep in val_eps)} frames; "
            f"val_fraction {val_fraction} of {len(episodes)}) give {scored}. Record more or longer episodes"
            # split_episodes keeps one episode for training, so val_fraction can help only below that
            + (", or raise val_fraction" if len(val_eps) < len(episodes) - 1 else ""))
    val_set = ClipDataset(val_eps, cfg.clip_len, cfg.frameskip)
    all_actions = np.concatenate([ep.actions for ep in train_eps])
    max_step = np.max([np.abs(np.diff(ep.actions, axis=0)).max(0) for ep in train_eps if len(ep) > 1], axis=0)
    meta = {
        # The action order: the planner node refuses a joint_names parameter that differs from it.
        "joint_names": list(parent_meta.get("joint_names") or config.get("data", {}).get("joint_names")
                            or episodes[0].joint_names),
        # The planner never commands outside what the model has seen.
        "action_low": all_actions.min(0).tolist(),
        "action_high": all_actions.max(0).tolist(),
        "action_max_step": max_step.tolist(),  # the fastest command change in the data: the planner's rate limit
        # One predicted step in seconds: the planner's control_period and the monitor's prediction_dt must match it.
        "step_s": step_s,
        "data": config.get("data", {}),
        "sources": [str(s) for s in (sources or sorted({ep.source for ep in episodes}))],
        "episodes": {"train": len(train_eps), "val": len(val_eps)},
    }
    sim = collect_manifest(sources).get("sim") or parent_meta.get("sim")
    if sim:  # simulated data: evaluation rebuilds the same scene and camera
        meta["sim"] = sim
    if parent:
        meta.update(parent=str(parent), parent_metrics=parent_meta.get("metrics", {}))
        meta["action_low"] = np.minimum(meta["action_low"], parent_meta.get("action_low", meta["action_low"])).tolist()
        meta["action_high"] = np.maximum(meta["action_high"], parent_meta.get("action_high", meta["action_high"])).tolist()
        meta["action_max_step"] = np.maximum(max_step, parent_meta.get("action_max_step", max_step)).tolist()

    t0 = time.time()
    metrics = train(model, train_set, val_set, tcfg, out, meta, run=run_identity(config, episodes, parent),
                    in_effect=lambda stored: stored_in_effect(stored, joints))
    model.cpu()  # calibration and the joint probe feed it CPU frames, and the checkpoint is saved from here
    path = out / "model.safetensors"
    if is_main_process():
        # The step the weights are of: a run resumed with a smaller --steps trains nothing and stays where it was.
        step = read_header(path)["meta"].get("step", tcfg.steps)
        if step > tcfg.steps:
            print(f"{out} was already trained to step {step}, past --steps {tcfg.steps}: nothing trained")
        calibration = calibrate_model(model, val_eps, cal["quantile"], cal["margin"], cal["consecutive"],
                                      cal["whiten"])
        meta.update(step=step, metrics=metrics, surprise=calibration.to_dict(), train_seconds=round(time.time() - t0, 1),
                    train_config=config, joint_metric=fit_joint_metric(model, train_eps).to_dict())
        save_checkpoint(path, model, meta)
        print(f"saved {path}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
              + f"; surprise threshold {calibration.threshold:.2f} (nominal false-trip rate {calibration.false_trip_rate:.4f})")
        if not tcfg.freeze_encoder and (warning := weak_latent_warning(metrics, meta["joint_names"])):
            print(warning)
    return path
