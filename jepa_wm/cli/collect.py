"""jepa-wm collect: run the exploration policy in the simulator and record one rosbag2 (MCAP) per episode.

Episode i uses seed `seed + i` for both the start state and the policy, so a
dataset is reproducible and can be extended with a later, disjoint seed range.
The bags hold the same topics a real arm offers (camera, camera_info,
joint_states, the commanded trajectory), so the training pipeline cannot tell
simulated from recorded data, and the object's pose (/object_pose), which
training only uses to report whether the latent encodes the object.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from jepa_wm.cli import (
    episode_steps, fraction, name_list, nonnegative_float, nonnegative_int, positive_float, positive_int,
)


def add_arguments(p):
    p.add_argument("--out", required=True, help="output folder; episodes go to OUT/episode_00000, ...")
    p.add_argument("--episodes", type=positive_int, default=100, help="number of episodes (default: %(default)s)")
    p.add_argument("--steps", type=episode_steps, default=100, help="frames per episode (default: %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the first episode (default: %(default)s)")
    p.add_argument("--first-index", type=nonnegative_int, default=0, help="number of the first episode folder (to extend a dataset)")
    p.add_argument("--push-fraction", type=fraction, default=0.3,
                   help="fraction of episodes that push the object on purpose (default: %(default)s)")
    p.add_argument("--max-step", type=positive_float, default=0.15, help="max joint change per control step, rad (default: %(default)s)")
    p.add_argument("--scene", default="builtin", help="'builtin' or an MJCF file (default: %(default)s); the "
                   "manifest records its absolute path, which eval, calibrate and demo load it from")
    p.add_argument("--camera", default="overhead", help="camera name in the scene (default: %(default)s)")
    p.add_argument("--joint-names", type=name_list, default=[], metavar="J1,J2,...",
                   help="the arm's joints, in action order (default: every joint with a <position> actuator, "
                        "in actuator order)")
    p.add_argument("--ee-site", default="", help="end-effector site, which pushes aim with (default: site 'ee' if the "
                                                 "scene has one, else the last arm joint's body)")
    p.add_argument("--object-body", default="", help="object body ('' = the first free body)")
    p.add_argument("--object-jitter", type=nonnegative_float, default=0.1,
                   help="each episode starts the object uniformly within this many metres (x and y) of its place "
                        "in the scene (default: %(default)s)")
    p.add_argument("--width", type=positive_int, default=64, help="image width (default: %(default)s)")
    p.add_argument("--height", type=positive_int, default=64, help="image height (default: %(default)s)")
    p.add_argument("--control-dt", type=positive_float, default=0.1, help="seconds per step (default: %(default)s)")
    add_robot_change_arguments(p)
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes, one simulator each (default: %(default)s)")


def add_robot_change_arguments(p):
    """A changed robot (weaker drives, re-zeroed joints, a payload) for adaptation experiments; shared with `jepa-wm eval`."""
    p.add_argument("--joint-gain-scale", type=nonnegative_float, nargs="+", metavar="S",
                   help="servo gain factor per joint, e.g. 1 0.3 1 (default: the scene's gains)")
    p.add_argument("--joint-offset", type=float, nargs="+", metavar="RAD",
                   help="zero offset per joint: the joint settles at command + offset (default: none)")
    p.add_argument("--added-mass", nargs="+", default=[], metavar="BODY=KG", help="extra mass on named bodies")


def robot_change(args) -> dict:
    """SimConfig overrides from add_robot_change_arguments' flags."""
    change = {}
    if args.joint_gain_scale:
        change["joint_gain_scale"] = list(args.joint_gain_scale)
    if args.joint_offset:
        change["joint_offset"] = list(args.joint_offset)
    if args.added_mass:
        try:
            change["added_mass"] = {k: float(v) for k, v in (item.split("=", 1) for item in args.added_mass)}
        except ValueError:
            raise SystemExit(f"--added-mass takes BODY=KG pairs, got {args.added_mass}") from None
    return change


def _sim_config(args):
    from jepa_wm.sim.arm import SimConfig

    # The absolute path: eval, calibrate and demo rebuild the scene from the manifest, from another directory.
    scene = args.scene if args.scene in ("", "builtin") else str(Path(args.scene).expanduser().resolve())
    return SimConfig(scene=scene, camera=args.camera, joint_names=list(args.joint_names), ee_site=args.ee_site,
                     object_body=args.object_body, object_jitter=args.object_jitter, width=args.width,
                     height=args.height, control_dt=args.control_dt, seed=args.seed, **robot_change(args))


_WORKER = {}
OBJECT_POSE_TOPIC = "/object_pose"  # the simulator node's default too (config/sim.yaml)


def record_episode(sim, policy, path: Path, steps: int, seed: int) -> int:
    """One episode into a new bag at `path`; returns the number of frames."""
    from jepa_wm.data.bags import EpisodeWriter

    obs = sim.reset(seed=seed)
    policy.reset(seed)
    with EpisodeWriter(path, sim.joint_names, sim.cfg.control_dt, camera_matrix=sim.camera_matrix(),
                       object_pose_topic=OBJECT_POSE_TOPIC if sim.has_object else "") as writer:
        for t in range(steps):
            stamp = round(obs.time * 1e9)
            writer.write_frame(stamp, obs.image, obs.joint_pos, obs.joint_vel, sim.object_pose())
            action = policy.act(obs)
            writer.write_command(stamp, action)  # issued right after frame t: it leads to frame t+1
            if t < steps - 1:
                obs = sim.step(action)
    return steps


def _work(job) -> int:
    """Runs in a worker process: one simulator per process, built on first use (and again for other settings:
    an in-process caller may collect twice)."""
    args, path, seed = job
    cfg = _sim_config(args)
    key = (asdict(cfg), args.push_fraction, args.max_step)
    if _WORKER.get("key") != key:
        from jepa_wm.sim.arm import ArmSim
        from jepa_wm.sim.explore import ExplorationPolicy

        sim = ArmSim(cfg)
        _WORKER.update(key=key, sim=sim, policy=ExplorationPolicy(sim, args.push_fraction, args.max_step))
    return record_episode(_WORKER["sim"], _WORKER["policy"], path, args.steps, seed)


def run(args) -> int:
    import multiprocessing

    import yaml
    from tqdm import tqdm

    out = Path(args.out)
    jobs = [(args, out / f"episode_{args.first_index + i:05d}", args.seed + i) for i in range(args.episodes)]
    for _, path, _ in jobs:
        if path.exists() and any(path.iterdir()):
            raise SystemExit(f"jepa-wm collect: {path} already exists and is not empty; refusing to overwrite it "
                             "(choose another --out or --first-index)")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for _, path, _ in jobs:
        if path.exists():
            path.rmdir()  # empty: rosbag2 writes into a directory it creates itself

    t0, frames = time.time(), 0
    bar = tqdm(total=args.episodes, desc="collect", unit="episode")
    try:
        if args.workers > 1:
            # spawn: each process gets its own MuJoCo and EGL context.
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                for n in pool.imap_unordered(_work, jobs):
                    frames += n
                    bar.update()
        else:
            for job in jobs:
                frames += _work(job)
                bar.update()
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # nothing was recorded (a bad scene or camera, say): leave no empty folder behind
        raise
    finally:
        bar.close()
    # The manifest describes recorded episodes only, so it is written once they all are.
    manifest = {"sim": asdict(_sim_config(args)), "push_fraction": args.push_fraction, "max_step": args.max_step,
                "steps": args.steps, "seeds": [args.seed, args.seed + args.episodes - 1]}
    (out / f"collect_{args.first_index:05d}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    wall = time.time() - t0
    print(f"wrote {args.episodes} episodes, {frames} frames to {out} in {wall:.1f} s ({frames / wall:.0f} frames/s)")
    return 0
