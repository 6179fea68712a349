"""jepa-wm calibrate: refit a checkpoint's surprise calibration on nominal data from deployment.

`train` and `finetune` calibrate on validation episodes of their training
data, which is exploration. A planner drives the arm in ways exploration does
not, and a calibration that never saw closed-loop runs can stop nominal ones
(models/README.md). On a robot, record nominal autonomous operation
(`ros2 launch jepa_wm record.launch.py`) and pass the bags; in the embedded
simulator, --sim-goals lets the deployed planner reach seeded goals and
--sim-explore adds exploration episodes. Writes a new checkpoint: the same
weights, the new calibration, and where it came from.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped models/sim.safetensors)")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write (.safetensors)")
    p.add_argument("--bags", nargs="+", default=[], help="rosbag2 recordings of nominal operation, or folders of them")
    p.add_argument("--sim-goals", type=int, default=0, help="closed-loop planner episodes in the embedded simulator")
    p.add_argument("--sim-explore", type=int, default=0, help="exploration episodes in the embedded simulator")
    p.add_argument("--steps", type=int, default=40, help="control steps per simulated episode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=50_000, help="first simulator seed (default: %(default)s, apart from eval's)")
    p.add_argument("--quantile", type=float, default=None, help="threshold quantile (default: the training config's)")
    p.add_argument("--margin", type=float, default=None, help="threshold margin (default: the training config's)")
    p.add_argument("--consecutive", type=int, default=None, help="frames over the threshold that stop (default: config)")
    p.add_argument("--whiten", action="store_true", help="score whitened residuals (a Mahalanobis distance)")
    p.add_argument("--config", default=None, help="training YAML whose 'calibration' section gives the defaults")


def run(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from jepa_wm.core.checkpoint import load_checkpoint, save_checkpoint
    from jepa_wm.core.config import dataclass_from_dict
    from jepa_wm.data.dataset import DataConfig, Episode, load_episodes
    from jepa_wm.eval import goals, plots, surprise_events
    from jepa_wm.eval.common import default_model_path, make_sim, planner_config
    from jepa_wm.core.surprise import residual_error
    from jepa_wm.train.calibration import calibrate_residuals, episode_residuals
    from jepa_wm.train.pipeline import load_config

    model_path = args.model or default_model_path()
    model, meta = load_checkpoint(model_path)
    defaults = load_config(args.config).get("calibration", {})
    settings = {k: getattr(args, k) if getattr(args, k) is not None else defaults.get(k, d)
                for k, d in (("quantile", 0.999), ("margin", 1.5), ("consecutive", 2))}
    episodes = []
    if args.bags:
        episodes += load_episodes(args.bags, dataclass_from_dict(DataConfig, meta.get("data") or {}, "data config"))
    if args.sim_goals or args.sim_explore:
        sim = make_sim(meta)
        agent = goals.LatentAgent(model, planner_config(), meta, seed=args.seed)
        for task in tqdm(goals.make_tasks(sim, args.sim_goals, args.seed), desc="simulator: planner"):
            ep = goals.run_episode(sim, task, agent, args.steps, tolerance=0.0)
            episodes.append(Episode(np.stack(ep.images), np.stack(ep.actions + ep.actions[-1:]), None, None, "sim/planner"))
        from jepa_wm.sim.explore import ExplorationPolicy

        policy = ExplorationPolicy(sim)
        for i in tqdm(range(args.sim_explore), desc="simulator: exploration"):
            frames, actions, _ = surprise_events.record(sim, policy, args.steps, args.seed + args.sim_goals + i)
            episodes.append(Episode(frames, actions, None, None, "sim/explore"))
    if not episodes:
        print("jepa-wm calibrate: nothing to calibrate on; pass --bags and/or --sim-goals / --sim-explore")
        return 2

    residuals = [episode_residuals(model, e.frames, e.actions) for e in episodes]
    cal = calibrate_residuals(residuals, settings["quantile"], settings["margin"], settings["consecutive"],
                              whiten=args.whiten)
    meta["surprise"] = cal.to_dict()
    meta["surprise_source"] = {"parent": str(model_path), "bags": [str(b) for b in args.bags],
                               "sim_goals": args.sim_goals, "sim_explore": args.sim_explore, "steps": args.steps,
                               "seed": args.seed, "whiten": cal.whitening is not None, **settings}
    out = save_checkpoint(args.out, model, meta)
    png = Path(out).with_suffix(".surprise.png")
    scores = {}  # per source, from the residuals the calibration used
    for e, r in zip(episodes, residuals):
        group = e.source if e.source.startswith("sim/") else "bags"
        scores.setdefault(group, []).append(residual_error(r, cal.whitening) / cal.scale)
    scores = {k: np.concatenate(v) for k, v in scores.items()}
    plots.calibration_histogram(scores, cal, png)
    print(f"calibrated on {len(episodes)} episodes ({sum(len(e) for e in episodes)} frames): threshold "
          f"{cal.threshold:.2f} x{cal.consecutive} on the {'whitened' if cal.whitening is not None else 'plain'} "
          f"score (scale {cal.scale:.4g}); wrote {out} and {png}")
    return 0
