"""Episodes from rosbags, and the clip dataset the world model trains on.

An episode is a sequence of camera frames with, for each frame t, the action
that leads from frame t to frame t+1 and the measured joint positions at t.
Bags are decoded once and cached as .npz (keyed by the bag's files and the
data config), so every later epoch, run and rank starts in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jepa_wm.core.config import dataclass_from_dict
from jepa_wm.data.bags import BagError, BagStreams, DataConfig, read_bag

__all__ = ["DataConfig", "Episode", "BagError", "load_episodes", "split_episodes", "ClipDataset", "action_stats",
           "find_bags", "episodes_from_streams", "checkpoint_data_config"]

# Part of every cache key: bump it when decoding or the cache layout changes, so old caches are not read.
CACHE_FORMAT = 4


@dataclass
class Episode:
    frames: np.ndarray  # (T, S, S, 3) uint8
    actions: np.ndarray  # (T, A) float32: the action taken after frame t (leads to frame t+1)
    joints: np.ndarray  # (T, J) float32: joint positions at frame t
    stamps: np.ndarray  # (T,) int64 ns
    source: str  # the bag it came from
    objects: np.ndarray | None = None  # (T, 3) float32: the tracked object's position at frame t; None: not tracked
    joint_names: tuple[str, ...] = ()  # the order of `joints` and `actions`; () = unnamed

    def __len__(self) -> int:
        return len(self.frames)


# ---------------------------------------------------------------------- synchronisation


def _interpolate(stamps, value_stamps, values) -> np.ndarray:
    """Values (joint positions, an object's position) at each frame stamp, linearly interpolated (held beyond the
    ends)."""
    return np.stack([np.interp(stamps, value_stamps, values[:, j]) for j in range(values.shape[1])], axis=1)


def _commands_for(stamps, streams: BagStreams, joints) -> np.ndarray:
    """For frame t, the position the latest command issued before frame t+1 commands at frame t+1's stamp.

    A trajectory's position between its points is interpolated (before its first point: the first; after its
    last: the last), so a one-point command gives its point. The last frame's window is one frame period long,
    so that a command from after the episode (the next episode's, across a camera gap) is not taken as its action.
    Before any command the arm holds: the action is the first measured position.
    """
    end = stamps[-1] + (stamps[-1] - stamps[-2]) if len(stamps) > 1 else np.iinfo(np.int64).max
    bounds = np.append(stamps[1:], end)
    # Index of the last command stamped before each window's end.
    last = np.searchsorted(streams.command_stamps, bounds, side="left") - 1
    actions = np.empty_like(joints)
    for t, (i, bound) in enumerate(zip(last, bounds)):
        if i < 0:
            actions[t] = joints[0]
        else:
            actions[t] = _trajectory_at(bound - streams.command_stamps[i], streams.command_offsets[i],
                                        streams.commands[i])
    return actions


def _trajectory_at(elapsed, offsets, points) -> np.ndarray:
    """Where a trajectory (points (P, J), each to be reached `offsets` ns after its stamp) is `elapsed` ns in."""
    return np.array([np.interp(elapsed, offsets, points[:, j]) for j in range(points.shape[1])])


def episodes_from_streams(streams: BagStreams, cfg: DataConfig, source: str) -> list[Episode]:
    """Split at camera gaps longer than max_gap_s, keep every frameskip-th frame, attach actions and joints."""
    stamps = streams.image_stamps
    cuts = np.nonzero(np.diff(stamps) > cfg.max_gap_s * 1e9)[0] + 1
    episodes = []
    for idx in np.split(np.arange(len(stamps)), cuts):
        idx = idx[:: cfg.frameskip]
        if len(idx) < 2:
            continue
        st = stamps[idx]
        joints = _interpolate(st, streams.joint_stamps, streams.joint_pos)
        if cfg.action_type == "delta":
            actions = np.diff(joints, axis=0, append=joints[-1:])  # the last frame holds
        else:
            actions = _commands_for(st, streams, joints)
        objects = None
        if len(streams.object_stamps):
            objects = _interpolate(st, streams.object_stamps, streams.object_pos).astype(np.float32)
        episodes.append(Episode(streams.images[idx], actions.astype(np.float32), joints.astype(np.float32), st,
                                source, objects, tuple(streams.joint_names)))
    return episodes


# ---------------------------------------------------------------------- loading with a cache


def find_bags(paths) -> list[Path]:
    """rosbag2 directories among `paths`: each path is a bag (it has metadata.yaml or .mcap/.db3 files) or a
    folder of bags, searched recursively."""
    bags = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise BagError(f"bag path {p} does not exist")
        if p.is_file():
            p = p.parent
        if _holds_a_bag(os.listdir(p)):
            bags.append(p)
            continue
        found = _bags_under(p)
        if not found:
            raise BagError(f"no rosbag2 bags (metadata.yaml, .mcap, .db3) under {p}")
        bags.extend(found)
    return bags


def _holds_a_bag(names) -> bool:
    """Whether a folder with these file names is a rosbag2 bag: metadata.yaml, or MCAP / SQLite storage."""
    return "metadata.yaml" in names or any(n.endswith((".mcap", ".db3")) for n in names)


def _bags_under(root: Path) -> list[Path]:
    """Bag folders under `root`, through symlinked folders too (a training set assembled with `ln -s`), each
    real folder once so that a link loop ends."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        if _holds_a_bag(files):
            found.append(Path(folder))
    return sorted(found)


def _cache_dir(cfg: DataConfig) -> Path | None:
    if cfg.cache_dir == "off":
        return None
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jepa_wm" / "episodes"


def cache_key(bag: Path, cfg: DataConfig) -> str:
    """Changes when the bag's files or any setting that affects decoding change."""
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(bag.iterdir()) if f.is_file()]
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "cache_dir"}
    blob = json.dumps([CACHE_FORMAT, str(bag.resolve()), files, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save(path: Path, episodes: list[Episode]):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    # One bag's episodes share its object pose topic: all have object positions or none does.
    objects = {"objects": np.concatenate([e.objects for e in episodes])} if episodes[0].objects is not None else {}
    np.savez(tmp, lengths=np.array([len(e) for e in episodes], np.int64),
             frames=np.concatenate([e.frames for e in episodes]), actions=np.concatenate([e.actions for e in episodes]),
             joints=np.concatenate([e.joints for e in episodes]), stamps=np.concatenate([e.stamps for e in episodes]),
             joint_names=np.array(episodes[0].joint_names, dtype=str), **objects)
    os.replace(tmp, path)  # atomic: concurrent readers (other ranks) never see half a file


def _load(path: Path, source: str) -> list[Episode]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in ("frames", "actions", "joints", "stamps", "objects") if k in z}
        cuts = np.cumsum(z["lengths"])[:-1]
        names = tuple(str(n) for n in z["joint_names"])
    parts = {k: np.split(v, cuts) for k, v in arrays.items()}
    objects = parts.get("objects", [None] * len(parts["frames"]))
    return [Episode(f, a, j, s, source, o, names) for f, a, j, s, o in
            zip(parts["frames"], parts["actions"], parts["joints"], parts["stamps"], objects)]


def load_bag(bag: Path, cfg: DataConfig) -> list[Episode]:
    """The episodes of one bag, from the cache when it is current."""
    root = _cache_dir(cfg)
    cached = root / f"{bag.name}-{cache_key(bag, cfg)}.npz" if root else None
    if cached is not None and cached.is_file():
        try:
            return _load(cached, str(bag))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged cache file: decode again
            warnings.warn(f"frame cache {cached} of bag {bag} is unreadable ({type(e).__name__}: {e}); decoding the "
                          "bag again")
            cached.unlink(missing_ok=True)
    episodes = episodes_from_streams(read_bag(bag, cfg), cfg, str(bag))
    if not episodes:
        raise BagError(f"bag {bag}: no episode of 2 or more frames on topic {cfg.image_topic}")
    if cached is not None:
        _save(cached, episodes)
    return episodes


def load_episodes(bag_paths_or_dirs, cfg: DataConfig | None = None, progress: bool = True) -> list[Episode]:
    """Every episode in the given bags (or folders of bags), decoded once and cached."""
    from tqdm import tqdm

    cfg = cfg or DataConfig()
    bags = find_bags(bag_paths_or_dirs)
    episodes = []
    for bag in tqdm(bags, desc="loading bags", unit="bag", disable=not progress):
        episodes.extend(load_bag(bag, cfg))
    # Without data.joint_names each bag is read in the order its commands name: two orders would mix up the joints.
    orders = {e.joint_names: e.source for e in episodes}
    if len(orders) > 1:
        (a, bag_a), (b, bag_b) = list(orders.items())[:2]
        raise BagError(f"bags {bag_a} and {bag_b} order their joints differently ({list(a)} and {list(b)}); "
                       "set data.joint_names to read them in one order")
    return episodes


def checkpoint_data_config(meta: dict) -> DataConfig:
    """How to read new bags for a trained model: its data settings, with the joints in its action order (bags
    that name them in another order are reordered by name; bags that lack one are refused). The frame cache is
    the default one: the training machine's cache_dir need not exist here."""
    data = dict(meta.get("data") or {})
    data.pop("cache_dir", None)
    if not data.get("joint_names") and meta.get("joint_names"):
        data["joint_names"] = list(meta["joint_names"])
    return dataclass_from_dict(DataConfig, data, "the checkpoint's data config")


# ---------------------------------------------------------------------- training views


def split_episodes(episodes, val_fraction: float, seed: int = 0):
    """(train, val) by whole episodes, so no validation frame was seen in training; at least one of each
    when there are two or more episodes."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_val = int(round(val_fraction * len(episodes)))
    if val_fraction > 0 and len(episodes) >= 2:
        n_val = min(max(n_val, 1), len(episodes) - 1)
    val = [episodes[i] for i in sorted(order[:n_val])]
    train = [episodes[i] for i in sorted(order[n_val:])]
    return train, val


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `clip_len` frames, `frameskip` env steps apart; each step's action is the frameskip env actions
    that lead to the next clip frame, concatenated (as LeWorldModel does). Clips carry the object's positions
    ("objects") when every episode has them."""

    def __init__(self, episodes, clip_len: int, frameskip: int = 1):
        self.episodes, self.clip_len, self.frameskip = list(episodes), clip_len, frameskip
        self.has_objects = bool(self.episodes) and all(e.objects is not None for e in self.episodes)
        span = clip_len * frameskip  # env steps a clip covers, its last action block included
        counts = [max(0, len(e) - span + 1) for e in self.episodes]
        if sum(counts) == 0 and self.episodes:
            raise ValueError(f"no episode is long enough for clips of {clip_len} frames x frameskip {frameskip} "
                             f"(needs {span} frames; longest has {max(len(e) for e in self.episodes)})")
        self.offsets = np.cumsum([0] + counts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        e = int(np.searchsorted(self.offsets, i, side="right") - 1)
        ep, t0, k = self.episodes[e], i - int(self.offsets[e]), self.frameskip
        steps = slice(t0, t0 + self.clip_len * k, k)
        actions = ep.actions[t0:t0 + self.clip_len * k].reshape(self.clip_len, k * ep.actions.shape[1])
        clip = {"frames": torch.from_numpy(np.ascontiguousarray(ep.frames[steps])),
                "actions": torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)),
                "joints": torch.from_numpy(np.ascontiguousarray(ep.joints[steps], dtype=np.float32))}
        if self.has_objects:
            clip["objects"] = torch.from_numpy(np.ascontiguousarray(ep.objects[steps], dtype=np.float32))
        return clip


def action_stats(episodes, floor: float = 1e-3):
    """Per-dimension mean and std (floored, so a joint that never moved does not blow up normalisation)."""
    actions = np.concatenate([e.actions for e in episodes]).astype(np.float64)
    return actions.mean(0).astype(np.float32), np.maximum(actions.std(0), floor).astype(np.float32)
