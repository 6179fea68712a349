"""jepa-wm calibrate: refit a checkpoint's surprise calibration on nominal data from deployment.

`train` and `finetune` calibrate on validation episodes of their training
data, which is exploration. A planner drives the arm in ways exploration does
not, and a calibration that never saw closed-loop runs can stop nominal ones
(models/README.md). On a robot, record nominal autonomous operation
(`ros2 launch jepa_wm record.launch.py`) and pass the bags; in the embedded
simulator, --sim-goals lets the deployed planner reach seeded goals and
--sim-explore adds exploration episodes. Writes a new checkpoint: the same
weights, the new calibration, and where it came from.

Every simulated episode is seeded by its own index (the planner included),
so the calibration does not depend on --workers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from jepa_wm.cli import episode_steps, fraction, nonnegative_int, positive_float, positive_int


def add_arguments(p):
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped models/sim.safetensors)")
    p.add_argument("--out", required=True,
                   help="the calibrated checkpoint to write (.safetensors); a new file, or --model itself")
    p.add_argument("--bags", nargs="+", default=[], help="rosbag2 recordings of nominal operation, or folders of them")
    p.add_argument("--sim-goals", type=nonnegative_int, default=0,
                   help="closed-loop planner episodes in the embedded simulator")
    p.add_argument("--sim-explore", type=nonnegative_int, default=0,
                   help="exploration episodes in the embedded simulator")
    p.add_argument("--steps", type=episode_steps, default=40,
                   help="control steps per simulated episode (default: %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=50_000,
                   help="first simulator seed (default: %(default)s, apart from eval's)")
    p.add_argument("--quantile", type=fraction, default=None, help="threshold quantile (default: the config's)")
    p.add_argument("--margin", type=positive_float, default=None, help="threshold margin (default: the config's)")
    p.add_argument("--consecutive", type=positive_int, default=None,
                   help="frames over the threshold that stop (default: the config's)")
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="score whitened residuals (a Mahalanobis distance) (default: the config's, else no)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="parallel processes for simulated episodes (default: %(default)s)")
    p.add_argument("--config", default=None,
                   help="training YAML whose 'calibration' section gives the defaults (default: the shipped one)")


_WORKER: dict = {}


def _simulate(job) -> tuple[str, np.ndarray]:
    """One simulated nominal episode -> (source, per-frame prediction residuals). Runs in a worker."""
    import torch

    from jepa_wm.core.checkpoint import load_checkpoint
    from jepa_wm.eval import goals, surprise_events
    from jepa_wm.eval.common import make_sim, planner_config
    from jepa_wm.sim.explore import ExplorationPolicy
    from jepa_wm.train.calibration import episode_residuals

    model_path, kind, seed, steps = job
    if _WORKER.get("path") != model_path:
        torch.set_num_threads(1)  # as the planner node runs (torch_threads: 1); parallelism comes from --workers
        model, meta = load_checkpoint(model_path)
        sim = make_sim(meta, model_path)
        _WORKER.update(path=model_path, model=model, meta=meta, sim=sim, policy=ExplorationPolicy(sim))
    model, meta, sim = _WORKER["model"], _WORKER["meta"], _WORKER["sim"]
    if kind == "sim/planner":
        agent = goals.LatentAgent(model, planner_config(), meta, seed=seed)
        ep = goals.run_episode(sim, goals.make_tasks(sim, 1, seed)[0], agent, steps, tolerance=0.0)
        frames, actions = np.stack(ep.images), np.stack(ep.actions + ep.actions[-1:])
    else:
        frames, actions, _, _ = surprise_events.record(sim, _WORKER["policy"], steps, seed)
    return kind, episode_residuals(model, frames, actions)


def check_out(out, model_path):
    """--out is a new file or the checkpoint being recalibrated: never a directory or another file, which the
    write would replace (checked before any episode is scored or simulated)."""
    from jepa_wm.core.config import ConfigError

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the checkpoint file to write in it, e.g. "
                          f"{out / 'model.safetensors'}")
    if out.exists() and not (Path(model_path).exists() and os.path.samefile(out, model_path)):
        raise ConfigError(f"--out {out} exists and is not --model {model_path}: calibrating would replace it. Remove "
                          "it, choose another --out, or pass it as --model to recalibrate it in place")


def run(args) -> int:
    import multiprocessing

    from tqdm import tqdm

    from jepa_wm.core.checkpoint import load_checkpoint, require_position_actions, save_checkpoint
    from jepa_wm.core.config import ConfigError
    from jepa_wm.core.surprise import MIN_NOMINAL_FRAMES, residual_error
    from jepa_wm.data.dataset import checkpoint_data_config, load_episodes
    from jepa_wm.eval import plots
    from jepa_wm.eval.common import default_model_path
    from jepa_wm.train.calibration import calibrate_residuals, episode_residuals, scored_frames
    from jepa_wm.train.pipeline import calibration_settings, check_config, load_config

    model_path = str(args.model or default_model_path())
    check_out(args.out, model_path)
    config = load_config(args.config)
    check_config(config)  # a misspelled key would silently keep its default
    settings = calibration_settings(config.get("calibration"))
    settings.update({k: getattr(args, k) for k in settings if getattr(args, k) is not None})
    if not (args.bags or args.sim_goals or args.sim_explore):
        raise ConfigError("nothing to calibrate on; pass --bags and/or --sim-goals / --sim-explore")
    model, meta = load_checkpoint(model_path)
    if args.sim_goals or args.sim_explore:  # simulated episodes feed the model position commands
        require_position_actions(meta, model_path)
    sources, residuals = [], []  # per episode
    if args.bags:
        for e in load_episodes(args.bags, checkpoint_data_config(meta)):
            sources.append("bags")
            residuals.append(episode_residuals(model, e.frames, e.actions))
    # Before simulating (minutes): a planner episode has steps + 1 frames, an exploration episode steps.
    skip = model.cfg.frameskip
    scored = (sum(len(r) for r in residuals) + args.sim_goals * scored_frames(args.steps + 1, skip)
              + args.sim_explore * scored_frames(args.steps, skip))
    if scored < MIN_NOMINAL_FRAMES:
        raise ConfigError(f"the calibration needs at least {MIN_NOMINAL_FRAMES} scored frames, these sources give "
                          f"{scored} (one per {skip} frame(s) of each episode, less its first): pass more or longer "
                          "--bags, or more --sim-goals / --sim-explore episodes or --steps")
    jobs = [(model_path, "sim/planner", args.seed + i, args.steps) for i in range(args.sim_goals)]
    jobs += [(model_path, "sim/explore", args.seed + args.sim_goals + i, args.steps) for i in range(args.sim_explore)]
    if jobs:
        bar = tqdm(total=len(jobs), desc="simulator episodes", unit="episode")
        if args.workers > 1:
            # spawn: each process gets its own MuJoCo and EGL context; map keeps the episodes in order.
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                results = []
                for r in pool.imap(_simulate, jobs):
                    results.append(r)
                    bar.update()
        else:
            results = []
            for job in jobs:
                results.append(_simulate(job))
                bar.update()
        bar.close()
        for kind, r in results:
            sources.append(kind)
            residuals.append(r)
    cal = calibrate_residuals(residuals, settings["quantile"], settings["margin"], settings["consecutive"],
                              whiten=settings["whiten"])
    meta["surprise"] = cal.to_dict()
    meta["surprise_source"] = {"parent": model_path, "bags": [str(b) for b in args.bags],
                               "sim_goals": args.sim_goals, "sim_explore": args.sim_explore, "steps": args.steps,
                               "seed": args.seed, **settings, "whiten": cal.whitening is not None}
    out = save_checkpoint(args.out, model, meta)
    png = Path(out).with_suffix(".surprise.png")
    scores = {}  # per source, from the residuals the calibration used
    for source, r in zip(sources, residuals):
        scores.setdefault(source, []).append(residual_error(r, cal.whitening) / cal.scale)
    scores = {k: np.concatenate(v) for k, v in scores.items()}
    plots.calibration_histogram(scores, cal, png)
    print(f"calibrated on {len(residuals)} episodes ({sum(len(r) for r in residuals)} scored frames): threshold "
          f"{cal.threshold:.2f} x{cal.consecutive} on the {'whitened' if cal.whitening is not None else 'plain'} "
          f"score (scale {cal.scale:.4g}); wrote {out} and {png}")
    return 0
