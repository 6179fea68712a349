"""jepa-wm finetune: adapt the dynamics of a trained model to new bags (encoder frozen by default).

The new checkpoint records its parent, the bags it used and its metrics; the
surprise calibration is refreshed on the new data. New bags are read as the
parent's were; --config's data section may say where and how to read them
(topics, stamps, frameskip, cache), not what the parent's inputs mean (action
type, joint order, image size) nor how long its step is.
"""

from __future__ import annotations

from jepa_wm.cli import check_out_dir, nonnegative_int, positive_int


def add_arguments(p):
    p.add_argument("--model", required=True, help="parent checkpoint (.safetensors)")
    p.add_argument("--bags", nargs="+", required=True, help="rosbag2 directories, or folders of them")
    p.add_argument("--freeze", choices=["encoder", "none"], default="encoder",
                   help="what stays fixed: 'encoder' (dynamics-only, the default) or 'none'")
    p.add_argument("--config", default=None,
                   help="training YAML (default: the shipped config/train.yaml); its 'finetune' section overrides "
                        "'train', its 'data' section says where and how to read the bags (topics, stamps, frameskip)")
    p.add_argument("--out", default="runs/finetune", help="output directory (resumes if it holds a run)")
    p.add_argument("--steps", type=positive_int, help="override finetune steps")
    p.add_argument("--seed", type=nonnegative_int, help="override the seed")


def run(args) -> int:
    import dataclasses

    from jepa_wm.core.checkpoint import read_header
    from jepa_wm.data.dataset import load_episodes
    from jepa_wm.train.pipeline import check_config, finetune_data_config, fit, load_config
    from jepa_wm.train.trainer import TrainConfig

    # Everything that can be checked without the bags is, before reading them takes minutes.
    check_out_dir(args.out)
    config = load_config(args.config)
    check_config(config)
    config["train"] = {**(config.get("train") or {}), **(config.get("finetune") or {}),
                       "freeze_encoder": args.freeze == "encoder"}
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            config["train"][key] = getattr(args, key)
    TrainConfig.from_dict(config["train"])
    # Read the new bags the way the parent's were, but where and how --config's data section says (topics,
    # stamps, frameskip, cache): the shipped config's defaults would replace the parent's topics.
    section = (config.get("data") or {}) if args.config else {}
    data = finetune_data_config(read_header(args.model), args.model, section)
    config["data"] = dataclasses.asdict(data)
    episodes = load_episodes(args.bags, data)
    fit(episodes, config, args.out, parent=args.model, sources=args.bags)
    return 0
