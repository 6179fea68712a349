"""`jepa-wm`: the one command-line entry point for everything off-robot.

Each subcommand lives in its own module of this package and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when
their subcommand runs, so `jepa-wm --help` stays instant.
"""

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("demo", "closed-loop demo: simulator, planner, monitor and gate on real DDS topics"),
    "collect": ("collect", "run an exploration policy in the simulator and record rosbag2 (MCAP) episodes"),
    "train": ("train", "train the world model (encoder + predictor) from rosbags or synthetic data"),
    "finetune": ("finetune", "fine-tune the dynamics (encoder frozen) on new rosbags"),
    "eval": ("eval", "closed-loop planning and surprise evaluation in the simulator"),
    "calibrate": ("calibrate", "refit a checkpoint's surprise threshold on nominal bags or simulated closed-loop runs"),
    "export": ("export", "export encoder and predictor to ONNX"),
    "build-engine": ("build_engine", "build (or reuse) a cached TensorRT engine from an ONNX file"),
    "bench": ("bench", "benchmark encoder, predictor, CEM and closed loop per backend and precision"),
}


def _available():
    """Subcommands whose module exists in this install."""
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(f"{__name__}.{module}") is not None:
            found[name] = (module, help_text)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jepa-wm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported to declare its flags.
        if argv and argv[0] == name:
            importlib.import_module(f"{__name__}.{module}").add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(f"{__name__}.{commands[args.command][0]}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
