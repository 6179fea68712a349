"""jepa-wm train: fit the world model on rosbag2 episodes (or a synthetic world for a smoke run)."""

from __future__ import annotations

from jepa_wm.cli import check_out_dir, nonnegative_int, positive_int


def add_arguments(p):
    p.add_argument("--config", default=None, help="training YAML (default: the shipped config/train.yaml)")
    p.add_argument("--bags", nargs="+", help="rosbag2 directories, or folders of them")
    p.add_argument("--synthetic", type=positive_int, metavar="N",
                   help="train on N episodes of a synthetic planar arm instead of bags")
    p.add_argument("--out", default="runs/train", help="output directory (resumes if it holds a run)")
    p.add_argument("--steps", type=positive_int, help="override train.steps")
    p.add_argument("--batch-size", type=positive_int, help="override train.batch_size")
    p.add_argument("--preset", help="override model.preset (tiny, sim, lewm)")
    p.add_argument("--seed", type=nonnegative_int, help="override train.seed")


def apply_overrides(config: dict, args) -> dict:
    train = config.setdefault("train", {})
    for key in ("steps", "batch_size", "seed"):
        if getattr(args, key, None) is not None:
            train[key] = getattr(args, key)
    if getattr(args, "preset", None):
        config.setdefault("model", {})["preset"] = args.preset
    return config


# require_position_actions (core/checkpoint.py) refuses such a model where plans are sent to the arm.
DELTA_WARNING = ("warning: data.action_type is 'delta' (joint-state changes): the planner node, eval, demo and "
                 "calibrate's simulated runs refuse the model this trains, as they send its plans as joint "
                 "positions; train on bags with recorded commands (action_type 'command') to plan with it")


def run(args) -> int:
    from jepa_wm.train.pipeline import check_config, check_frame_size, fit, load_config, model_config
    from jepa_wm.train.trainer import TrainConfig, is_main_process

    if bool(args.bags) == bool(args.synthetic):
        raise SystemExit("jepa-wm train: give exactly one of --bags DIR... or --synthetic N")
    # Everything that can be checked without the data is, before loading bags takes minutes.
    check_out_dir(args.out)
    config = apply_overrides(load_config(args.config), args)
    check_config(config)
    TrainConfig.from_dict(config["train"])
    cfg = model_config(config.get("model"))
    if args.synthetic:
        from jepa_wm.train.synthetic import synthetic_episodes

        # The synthetic world is drawn at the model's input size, and the checkpoint records that size.
        config["data"] = {**(config.get("data") or {}), "image_size": cfg.image_size}
        episodes = synthetic_episodes(args.synthetic, size=cfg.image_size, seed=config["train"].get("seed", 0))
    else:
        from jepa_wm.data.dataset import DataConfig, load_episodes
        from jepa_wm.core.config import dataclass_from_dict

        data = dataclass_from_dict(DataConfig, config.get("data", {}), "data config")
        check_frame_size(data.image_size, cfg)
        if data.action_type == "delta" and is_main_process():
            print(DELTA_WARNING, flush=True)
        episodes = load_episodes(args.bags, data)
    fit(episodes, config, args.out, sources=args.bags)
    return 0
