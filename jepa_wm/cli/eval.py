"""jepa-wm eval: closed-loop planning to goal images and surprise detection in the embedded simulator.

Prints success rate, final distance and plan time against a random-action
baseline over a fixed, seeded goal set; with the checkpoint's surprise
calibration (or one fitted on nominal episodes) reports AUROC and
frames-to-detect for injected events, twice: under the exploration policy and
under the planner driving the arm to goals (what the monitor watches in
deployment). Writes report.json, a filmstrip PNG, error-over-time plots and
surprise traces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

STEPS = 40  # control steps per surprise episode


def add_arguments(p):
    from jepa_wm.cli import nonnegative_int, positive_float, positive_int
    from jepa_wm.cli.collect import add_robot_change_arguments

    p.add_argument("--model", default=None, help="checkpoint (default: the shipped models/sim.safetensors)")
    p.add_argument("--goals", type=positive_int, default=50, help="number of seeded goals (default: %(default)s)")
    p.add_argument("--budget", type=positive_int, default=30, help="control steps per goal (default: %(default)s)")
    p.add_argument("--tolerance", type=positive_float, default=0.1,
                   help="success: max joint error in rad (default: %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=1000, help="first goal seed (default: %(default)s)")
    p.add_argument("--push", action="store_true", help="also evaluate pushing the object to a goal image")
    p.add_argument("--object-tolerance", type=positive_float, default=0.02,
                   help="push success: the object within this many metres of its goal position (default: %(default)s)")
    p.add_argument("--surprise-episodes", type=nonnegative_int, default=20, help="episodes per event type (0 skips surprise)")
    p.add_argument("--planner-config", default=None,
                   help="planner parameters overlaid on config/planner.yaml (any subset of its keys)")
    p.add_argument("--out", default="runs/eval", help="output directory (default: %(default)s)")
    add_robot_change_arguments(p)


def run(args) -> int:
    from tqdm import tqdm

    from jepa_wm.cli import check_out_dir
    from jepa_wm.cli.collect import robot_change
    from jepa_wm.core.checkpoint import load_checkpoint, require_position_actions
    from jepa_wm.core.surprise import SurpriseCalibration
    from jepa_wm.data.dataset import Episode
    from jepa_wm.eval import goals, plots, surprise_events
    from jepa_wm.eval.common import default_model_path, make_sim, planner_config
    from jepa_wm.sim.explore import ExplorationPolicy
    from jepa_wm.train.calibration import calibrate_model

    # Every input is checked before the first (slow) episode: a mistake costs seconds, not the run.
    out = check_out_dir(args.out)
    pcfg = planner_config(args.planner_config)
    model_path = args.model or default_model_path()
    model, meta = load_checkpoint(model_path)
    require_position_actions(meta, model_path)
    sim = make_sim(meta, model_path, **robot_change(args))
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": str(model_path), "planner": vars(pcfg), "goals": args.goals, "budget": args.budget,
              "tolerance_rad": args.tolerance, "object_tolerance_m": args.object_tolerance}

    suites = [("reach", False)] + ([("push", True)] if args.push else [])
    for name, push in suites:
        tasks = goals.make_tasks(sim, args.goals, args.seed, push=push)
        agent = goals.LatentAgent(model, pcfg, meta, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        object_tolerance = args.object_tolerance if push else None
        planned = [goals.run_episode(sim, t, agent, args.budget, args.tolerance, object_tolerance=object_tolerance)
                   for t in tqdm(tasks, desc=f"{name}: planner")]
        random = [goals.run_episode(sim, t, None, args.budget, args.tolerance, rng, object_tolerance)
                  for t in tqdm(tasks, desc=f"{name}: random")]
        report[name] = {"planner": goals.summary(planned), "random": goals.summary(random)}
        plots.filmstrip(planned, out / f"{name}_filmstrip.png")
        plots.error_curves(planned, random, out / f"{name}_errors.png", args.tolerance)
        p, r = report[name]["planner"], report[name]["random"]
        print(f"{name}: success {p['success_rate']:.0%} (random {r['success_rate']:.0%}), final joint error "
              f"{p['final_error_mean']:.3f} rad (random {r['final_error_mean']:.3f}), object off its goal position "
              f"{100 * p['object_error_median']:.1f} cm median (random {100 * r['object_error_median']:.1f}), "
              f"plan {p['plan_ms_median']:.0f} ms/step")
        if push:
            print(f"{name}: arm pose reached {p['pose_reached_rate']:.0%} (random {r['pose_reached_rate']:.0%}), "
                  f"object within {100 * args.object_tolerance:.0f} cm of its goal position as well in "
                  f"{p['success_rate']:.0%}")

    if args.surprise_episodes:
        n = args.surprise_episodes
        explore = ExplorationPolicy(sim)
        # The threshold the surprise monitor deploys: the checkpoint's own calibration.
        if "surprise" in meta:
            cal = SurpriseCalibration.from_dict(meta["surprise"])
        else:
            runs = [surprise_events.record(sim, explore, STEPS, args.seed + 500 + n + i)[:2] for i in range(n)]
            cal = calibrate_model(model, [Episode(f, a, None, None, "eval") for f, a in runs])
        # Exploration moves the arm all the time; the planner slows down near its goal, so its events start early.
        seeker = goals.GoalSeeker(sim, goals.LatentAgent(model, pcfg, meta, seed=args.seed))
        for key, policy, starts in (("surprise", explore, range(15, 25)), ("surprise_closed_loop", seeker, range(3, 8))):
            t0 = time.time()
            s = surprise_suite(model, sim, policy, cal, n, args.seed, starts, key, out)
            report[key] = {**s, "seconds": round(time.time() - t0, 1)}

    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {out / 'report.json'} and plots in {out}")
    return 0


def surprise_suite(model, sim, policy, cal, n: int, seed: int, starts: range, key: str, out: Path) -> dict:
    """n nominal and n-per-event episodes under `policy`, scored with `cal`; printed, plotted, summarised.

    Event i starts at step starts[i % len(starts)]. Events the policy never makes visible (a jammed joint
    it does not move, a frozen camera on an arm at rest) are counted, not scored.
    """
    from tqdm import tqdm

    from jepa_wm.core.surprise import residual_error
    from jepa_wm.eval import plots, surprise_events
    from jepa_wm.eval.common import deployed_checks
    from jepa_wm.train.calibration import episode_residuals

    label = key.replace("_", " ")
    checks = deployed_checks()
    runs = [surprise_events.record(sim, policy, STEPS, seed + 500 + i) for i in tqdm(range(n), desc=f"{label}: nominal")]
    residuals = [episode_residuals(model, f, a) for f, a, _, _ in runs]
    nominal = [surprise_events.EventEpisode("nominal", -1, residual_error(r, cal.whitening) / cal.scale,
                                            surprise_events.check_trips(f, q, a, *checks))
               for r, (f, a, _, q) in zip(residuals, runs)]
    events, skipped = [], surprise_events.skipped_events(sim)
    for kind in (k for k in surprise_events.EVENTS if k not in skipped):
        for i in tqdm(range(n), desc=f"{label}: {kind}"):
            f, a, onset, q = surprise_events.record(sim, policy, STEPS, seed + 900 + i, kind, starts[i % len(starts)])
            sim.reset()  # clear the perturbation
            events.append(surprise_events.EventEpisode(kind, onset, surprise_events.episode_scores(model, f, a, cal),
                                                       surprise_events.check_trips(f, q, a, *checks)))
    nominal_error = float(np.mean(np.concatenate([residual_error(r) for r in residuals])))
    calibration = {k: v for k, v in cal.to_dict().items() if k != "whitening"}
    calibration["whitened"] = cal.whitening is not None
    s = {"calibration": calibration, "nominal_prediction_error": nominal_error,
         **surprise_events.summarise(nominal, events, cal, skipped=skipped)}
    plots.surprise_traces(nominal, events, cal, out / f"{key}.png")
    print(f"{label}: one-step prediction error on nominal episodes {nominal_error:.4f}")
    print(f"{label}: threshold {cal.threshold:.2f}, stops on nominal episodes {s['nominal_stops']}/{s['nominal_episodes']} "
          f"(with the frozen-frame and stuck-joint checks: {s['checks_nominal_stops']})")
    for kind in surprise_events.EVENTS:
        e = s[kind]
        if "skipped" in e:
            print(f"  {kind}: skipped ({e['skipped']})")
            continue
        if not e["episodes"]:
            print(f"  {kind}: never visible in {n} episodes")
            continue
        print(f"  {kind}: AUROC {e['auroc']:.3f} (per frame {e['auroc_frames']:.3f}), detected within 2 frames "
              f"{e['detected_within_2']:.0%}, at all {e['detected']:.0%}, frames to detect median "
              f"{e['frames_to_detect_median']:.0f} max {e['frames_to_detect_max']:.0f} "
              f"({e['never_visible']} of {n} never visible); with the frozen-frame and stuck-joint checks: within 2 "
              f"frames {e['checks']['detected_within_2']:.0%}, at all {e['checks']['detected']:.0%}")
    for row in s["threshold_sweep"][1:]:
        print(f"  at threshold {row['threshold']:.1f}: {row['nominal_stops']}/{n} nominal stops, within 2 frames "
              + ", ".join(f"{k.removesuffix('_within_2')} {v:.0%}" for k, v in row.items() if k.endswith("_within_2")))
    return s
