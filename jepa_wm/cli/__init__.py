"""`jepa-wm`: the one command-line entry point for everything off-robot.

Each subcommand lives in its own module of this package and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when
their subcommand runs, so `jepa-wm --help` stays instant.

A mistake of the user's (a missing or damaged file, a bad bag, a config key,
a run that does not match its folder) ends in one line, `jepa-wm <command>:
error: ...`, and exit 2; Ctrl-C in one line too, and exit 130; set
JEPA_WM_TRACEBACK=1 for the traceback. Anything else is a bug and keeps its
traceback.
"""

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

EXIT_USAGE = 2  # argparse's own exit status for a bad command line
EXIT_INTERRUPTED = 130  # a shell's status for a command that SIGINT ended

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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _checked(int, text, lambda v: v >= 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _checked(int, text, lambda v: v >= 0, "an integer >= 0")


def episode_steps(text: str) -> int:
    """argparse type: steps of a recorded or simulated episode, an integer >= 2."""
    return _checked(int, text, lambda v: v >= 2, "an integer >= 2 (an action needs a frame before and after it)")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _checked(float, text, lambda v: 0 < v < float("inf"), "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _checked(float, text, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _checked(float, text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def name_list(text: str) -> list[str]:
    """argparse type: a comma-separated list of names, none empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of names")
    return names


def _checked(kind, text, ok, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def check_out_dir(path, flag: str = "--out") -> Path:
    """`path` as an output directory, refused before any work if it (or a parent) is an existing non-directory."""
    from jepa_wm.core.config import ConfigError

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {path}: {p} exists and is not a directory; choose another {flag}")
            break
    return path


def _user_errors() -> tuple:
    """Exceptions that report a mistake in the user's input, not a bug (each names what to fix)."""
    from jepa_wm.backends.base import BackendUnavailable
    from jepa_wm.core.checkpoint import CheckpointError
    from jepa_wm.core.config import ConfigError
    from jepa_wm.data.bags import BagError
    from jepa_wm.data.images import ImageFormatError
    from jepa_wm.train.trainer import RunMismatch

    return (BagError, BackendUnavailable, CheckpointError, ConfigError, ImageFormatError, RunMismatch, OSError)


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
    try:
        return int(module.run(args) or 0)
    except _user_errors() as e:
        if os.environ.get("JEPA_WM_TRACEBACK"):
            raise
        print(f"jepa-wm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # how a user stops a command, not a bug; training says where it can resume
        if os.environ.get("JEPA_WM_TRACEBACK"):
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets the Ctrl-C: rank 0 speaks for all
            print(f"jepa-wm {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
