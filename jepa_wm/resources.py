"""Where the package's shipped files (config/, models/) live: the source tree or the install prefix.

ROS-free: a colcon or pip install puts them in <prefix>/share/jepa_wm (setup.py
data_files); a source checkout has them beside the package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "jepa_wm"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """The directory holding config/ and models/, source checkout first."""
    if (SOURCE_ROOT / "config").is_dir() and (SOURCE_ROOT / "package.xml").is_file():
        return SOURCE_ROOT
    for prefix in (sys.prefix, *_ament_prefixes()):
        candidate = Path(prefix) / "share" / PACKAGE
        if (candidate / "config").is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find {PACKAGE}'s config/ and models/ (looked in {SOURCE_ROOT} and "
                            f"{sys.prefix}/share/{PACKAGE}); reinstall with `pip install .` or `colcon build`")


def _ament_prefixes():
    return [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]


def config_file(name: str) -> Path:
    return share_dir() / "config" / name


def model_file(name: str = "sim.safetensors") -> Path:
    return share_dir() / "models" / name
