"""Episodes from rosbag2 bags (sync, actions, frameskip, gaps, cache), the training views, and `jepa-wm collect`."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from jepa_wm.data.bags import BagError, DataConfig
from jepa_wm.data.dataset import (ClipDataset, Episode, action_stats, checkpoint_data_config, find_bags,
                                  load_episodes, split_episodes)

TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types
JOINTS = ["shoulder", "elbow"]
MS = 1_000_000
BASE = 1_700_000_000 * 1_000_000_000


def _header(ns):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id="")


def _image(ns, value):
    rgb = np.full((16, 16, 3), value, np.uint8)
    return T["sensor_msgs/msg/Image"](header=_header(ns), height=16, width=16, encoding="rgb8", is_bigendian=0,
                                      step=48, data=rgb.reshape(-1))


def _joint_state(ns, pos):
    return T["sensor_msgs/msg/JointState"](header=_header(ns), name=JOINTS, position=np.asarray(pos, float),
                                           velocity=np.zeros(0), effort=np.zeros(0))


def _command(ns, pos, points=None):
    """A one-point trajectory to `pos` in 100 ms; or `points` [(ms from the stamp, pos)], as MoveIt plans them."""
    points = [(100, pos)] if points is None else points
    points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(q, float), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=ms // 1000, nanosec=ms % 1000 * MS))
        for ms, q in points]
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(ns), joint_names=JOINTS, points=points)


def write_bag(path, frames_ms, joints=None, commands=None):
    """A bag with frames at `frames_ms` (frame k has pixel value k), joint states {ms: pos}, commands {ms: pos, or
    [(ms from the stamp, pos)] for a trajectory of several points}."""
    joints = {ms: [ms / 1000, -ms / 1000] for ms in frames_ms} if joints is None else joints
    msgs = [("/camera/image_raw", ms, _image(BASE + ms * MS, k)) for k, ms in enumerate(frames_ms)]
    msgs += [("/joint_states", ms, _joint_state(BASE + ms * MS, q)) for ms, q in joints.items()]
    msgs += [("/arm_controller/joint_trajectory", ms,
              _command(BASE + ms * MS, None, q) if isinstance(q, list) and isinstance(q[0], tuple)
              else _command(BASE + ms * MS, q))
             for ms, q in (commands or {}).items()]
    msgs.sort(key=lambda m: m[1])
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, ms, msg in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=TS)
            w.write(conns[topic], BASE + ms * MS, TS.serialize_cdr(msg, msg.__msgtype__))
    return path


@pytest.fixture
def cfg(tmp_path):
    def make(**kw):
        kw.setdefault("image_size", 16)
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        return DataConfig(**kw)
    return make


def _ms(stamps):
    return ((np.asarray(stamps) - BASE) // MS).tolist()


def _named_bag(path, names, shoulder=0.5, elbow=-0.25, n=3):
    """A bag whose joint states and commands list `names` in that order; the shoulder and elbow hold their values."""
    from jepa_wm.data.bags import EpisodeWriter

    q = [{"shoulder": shoulder, "elbow": elbow}.get(j, 0.0) for j in names]
    with EpisodeWriter(path, names) as w:
        for i in range(n):
            w.write_frame(i * 100 * MS, np.full((16, 16, 3), i, np.uint8), q, [0.0, 0.0])
            w.write_command(i * 100 * MS, q)
    return path


def test_bags_that_order_the_joints_differently_are_not_mixed_up(tmp_path, cfg):
    a = _named_bag(tmp_path / "a", ["shoulder", "elbow"])
    b = _named_bag(tmp_path / "b", ["elbow", "shoulder"])
    with pytest.raises(BagError, match=r"bags .*a and .*b order their joints differently \(\['shoulder', 'elbow'\] "
                                       r"and \['elbow', 'shoulder'\]\); set data.joint_names"):
        load_episodes([a, b], cfg(), progress=False)
    eps = load_episodes([a, b], cfg(joint_names=["shoulder", "elbow"]), progress=False)
    for e in eps:
        assert e.joint_names == ("shoulder", "elbow")
        np.testing.assert_allclose(e.joints, [[0.5, -0.25]] * 3)
        np.testing.assert_allclose(e.actions, [[0.5, -0.25]] * 3)


def test_new_bags_are_read_in_the_checkpoint_joint_order(tmp_path):
    # Fine-tuning and calibration read a robot's new bags for a trained model: its joints, in its action order,
    # whatever order the new recorder used.
    # The training machine's frame cache is not this one's (fine-tuning takes it from its own config).
    meta = {"data": {"image_size": 16, "joint_names": [], "cache_dir": "/proc/alice/cache"},
            "joint_names": ["shoulder", "elbow"]}
    data = checkpoint_data_config(meta)
    assert data.joint_names == ["shoulder", "elbow"] and data.image_size == 16 and data.cache_dir == ""
    data = dataclasses.replace(data, cache_dir="off")
    [e] = load_episodes(_named_bag(tmp_path / "b", ["elbow", "shoulder"]), data, progress=False)
    np.testing.assert_allclose(e.actions, [[0.5, -0.25]] * 3)
    with pytest.raises(BagError, match=r"no joint states for joints \['shoulder', 'elbow'\]"):
        load_episodes(_named_bag(tmp_path / "c", ["elbow", "wrist"]), data, progress=False)


# ---------------------------------------------------------------------- synchronisation


def test_commands_are_synced_to_frames_by_timestamp(tmp_path, cfg):
    frames = [0, 100, 200, 300, 400, 500]
    commands = {
        20: [1, 1],  # during frame 0
        130: [2, 2],  # frame 1
        210: [3, 3], 260: [4, 4],  # frame 2: the latest counts
        # frame 3: none -> frame 2's command is still in force
        400: [5, 5],  # stamped exactly at frame 4: it belongs to frame 4
        560: [6, 6],  # the last frame's window is one frame period long...
        650: [7, 7],  # ...so a command after it is nobody's
    }
    bag = write_bag(tmp_path / "bag", frames, commands=commands)
    [ep] = load_episodes(bag, cfg(), progress=False)
    assert isinstance(ep, Episode) and len(ep) == 6 and ep.source == str(bag)
    assert _ms(ep.stamps) == frames
    np.testing.assert_array_equal(ep.frames[:, 0, 0, 0], np.arange(6))
    np.testing.assert_array_equal(ep.actions[:, 0], [1, 2, 4, 4, 5, 6])
    assert ep.actions.dtype == np.float32 and ep.joints.dtype == np.float32
    np.testing.assert_allclose(ep.joints, np.stack([np.array(frames) / 1000, -np.array(frames) / 1000], 1), atol=1e-6)


def test_before_the_first_command_the_arm_holds(tmp_path, cfg):
    frames = [0, 100, 200, 300]
    bag = write_bag(tmp_path / "late", frames, commands={250: [9, 9]})
    [ep] = load_episodes(bag, cfg(), progress=False)
    # No command yet: the arm holds where it was (the first measured position); then the command.
    np.testing.assert_allclose(ep.actions[:2], ep.joints[[0, 0]])
    assert not np.allclose(ep.joints[0], ep.joints[1])
    np.testing.assert_allclose(ep.actions[2:], [[9, 9], [9, 9]])

    bag = write_bag(tmp_path / "early", [100, 200, 300], commands={50: [7, 7], 250: [8, 8]})
    [ep] = load_episodes(bag, cfg(), progress=False)
    np.testing.assert_allclose(ep.actions, [[7, 7], [8, 8], [8, 8]])  # a command from before frame 0 is in force


def test_a_trajectory_of_several_points_commands_where_it_is_at_the_next_frame(tmp_path, cfg):
    """A MoveIt-style plan starts at the current state and reaches its goal over several frames: the action for
    frame t is the position it commands at frame t+1, not its first point."""
    frames = [0, 100, 200, 300, 400, 500, 600]
    plan = [(0, [0, 0]), (200, [2, -2]), (300, [3, -6])]  # (ms after its stamp, position)
    replan = [(100, [9, 9]), (300, [11, 7])]
    bag = write_bag(tmp_path / "bag", frames, commands={0: plan, 450: replan})
    [ep] = load_episodes(bag, cfg(), progress=False)
    np.testing.assert_allclose(ep.actions, [[1, -1], [2, -2], [3, -6],
                                            [3, -6],  # past its last point
                                            [9, 9],  # the replan, 50 ms in: before its first point
                                            [9.5, 8.5], [10.5, 7.5]])  # the last frame's window: one period


def test_joint_states_are_interpolated_to_frame_stamps(tmp_path, cfg):
    frames = [0, 100, 200, 300]
    joints = {50: [0.0, 1.0], 150: [1.0, 3.0], 250: [3.0, 3.0]}  # 50 ms off the frames
    bag = write_bag(tmp_path / "bag", frames, joints=joints, commands={0: [0, 0]})
    [ep] = load_episodes(bag, cfg(), progress=False)
    np.testing.assert_allclose(ep.joints, [[0.0, 1.0],  # before the first state: held
                                           [0.5, 2.0], [2.0, 3.0],
                                           [3.0, 3.0]])  # after the last: held


def test_delta_actions_are_the_next_joint_change(tmp_path, cfg):
    frames = [0, 100, 200, 300]
    joints = {0: [0.0, 0.0], 100: [0.1, -0.2], 200: [0.4, -0.2], 300: [0.4, 0.5]}
    bag = write_bag(tmp_path / "bag", frames, joints=joints)  # no command topic at all
    [ep] = load_episodes(bag, cfg(action_type="delta"), progress=False)
    np.testing.assert_allclose(ep.actions, [[0.1, -0.2], [0.3, 0.0], [0.0, 0.7], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ep.joints[:-1] + ep.actions[:-1], ep.joints[1:], atol=1e-6)
    with pytest.raises(BagError, match="no action topic /arm_controller/joint_trajectory"):
        load_episodes(bag, cfg(action_type="command"), progress=False)


def test_frameskip_keeps_every_kth_frame(tmp_path, cfg):
    frames = list(range(0, 700, 100))  # 7 frames
    commands = {ms + 10: [k, k] for k, ms in enumerate(frames)}
    bag = write_bag(tmp_path / "bag", frames, commands=commands)
    [ep] = load_episodes(bag, cfg(frameskip=3), progress=False)
    assert _ms(ep.stamps) == [0, 300, 600]
    np.testing.assert_array_equal(ep.frames[:, 0, 0, 0], [0, 3, 6])
    # The action for a kept frame: the latest command before the next kept frame.
    np.testing.assert_array_equal(ep.actions[:, 0], [2, 5, 6])
    [delta] = load_episodes(bag, cfg(frameskip=3, action_type="delta"), progress=False)
    np.testing.assert_allclose(delta.actions[:2, 0], [0.3, 0.3], atol=1e-6)


def test_camera_gaps_split_episodes(tmp_path, cfg):
    frames = [0, 100, 200, 300, 3300, 3400, 3500, 9000]  # 3 s gap, then a lone frame after 5.5 s
    commands = {ms: [k, k] for k, ms in enumerate(frames)}
    bag = write_bag(tmp_path / "bag", frames, commands=commands)
    eps = load_episodes(bag, cfg(), progress=False)
    assert [_ms(e.stamps) for e in eps] == [[0, 100, 200, 300], [3300, 3400, 3500]]  # the lone frame is dropped
    np.testing.assert_array_equal(eps[1].frames[:, 0, 0, 0], [4, 5, 6])
    # The last frame before a gap keeps its own command, not the next episode's (frame 7's at 9000 ms).
    np.testing.assert_array_equal(eps[0].actions[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(eps[1].actions[:, 0], [4, 5, 6])
    assert [len(e) for e in load_episodes(bag, cfg(max_gap_s=4.0), progress=False)] == [7]
    assert [len(e) for e in load_episodes(bag, cfg(max_gap_s=10.0), progress=False)] == [8]


def test_a_bag_without_a_two_frame_episode_is_an_error(tmp_path, cfg):
    bag = write_bag(tmp_path / "lonely", [0, 5000], commands={0: [0, 0]})
    with pytest.raises(BagError, match=f"bag {bag}: no episode of 2 or more frames on topic /camera/image_raw"):
        load_episodes(bag, cfg(), progress=False)


# ---------------------------------------------------------------------- finding bags


def test_find_bags_in_folders_files_and_errors(tmp_path):
    a = write_bag(tmp_path / "set" / "a", [0, 100])
    b = write_bag(tmp_path / "set" / "day2" / "b", [0, 100])
    (tmp_path / "set" / "notes.txt").write_text("not a bag")
    assert find_bags(tmp_path / "set") == [a, b]
    assert find_bags(str(a)) == [a]
    assert find_bags(next(b.glob("*.mcap"))) == [b]  # a storage file stands for its bag
    assert find_bags([b, a]) == [b, a]
    with pytest.raises(BagError, match="does not exist"):
        find_bags(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no rosbag2 bags"):
        find_bags(tmp_path / "empty")


def test_find_bags_follows_symlinked_folders_once(tmp_path):
    """A training set assembled from links to bags recorded elsewhere; a link back up does not loop."""
    a = write_bag(tmp_path / "day1" / "a", [0, 100])
    b = write_bag(tmp_path / "day2" / "b", [0, 100])
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "a").symlink_to(a, target_is_directory=True)
    (mix / "day2").symlink_to(b.parent, target_is_directory=True)
    (mix / "loop").symlink_to(mix, target_is_directory=True)
    assert find_bags(mix) == [mix / "a", mix / "day2" / "b"]


def test_load_episodes_of_a_folder(tmp_path, cfg):
    write_bag(tmp_path / "set" / "ep0", [0, 100, 200], commands={0: [1, 1]})
    write_bag(tmp_path / "set" / "ep1", [0, 100], commands={0: [2, 2]})
    eps = load_episodes(tmp_path / "set", cfg(), progress=False)
    assert [len(e) for e in eps] == [3, 2]
    assert [os.path.basename(e.source) for e in eps] == ["ep0", "ep1"]
    np.testing.assert_array_equal([e.actions[0, 0] for e in eps], [1, 2])


# ---------------------------------------------------------------------- the decoded-episode cache


def _episodes_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for field in ("frames", "actions", "joints", "stamps"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
            assert getattr(x, field).dtype == getattr(y, field).dtype
        assert x.source == y.source


def _scramble_keeping_size_and_mtime(bag):
    """Overwrite the bag's storage with junk of the same size and mtime: only a cache can still load it."""
    mcap = next(bag.glob("*.mcap"))
    st = mcap.stat()
    mcap.write_bytes(b"\0" * st.st_size)
    os.utime(mcap, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_second_load_comes_from_the_cache(tmp_path, cfg):
    frames = [0, 100, 200, 300, 2000, 2100, 2200]  # two episodes, so the cache must keep the split
    bag = write_bag(tmp_path / "bag", frames, commands={ms: [k, -k] for k, ms in enumerate(frames)})
    c = cfg()
    first = load_episodes(bag, c, progress=False)
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith("bag-")
    assert not list((tmp_path / "cache").glob("*tmp*"))
    _scramble_keeping_size_and_mtime(bag)
    with pytest.raises(BagError, match=str(bag)):  # the bag itself is unreadable now...
        load_episodes(bag, cfg(cache_dir="off"), progress=False)
    second = load_episodes(bag, c, progress=False)  # ...so this came from the cache
    assert [len(e) for e in second] == [4, 3]
    _episodes_equal(first, second)


def test_a_damaged_cache_file_is_decoded_again_from_the_bag(tmp_path, cfg):
    frames = [0, 100, 200, 300]
    bag = write_bag(tmp_path / "bag", frames, commands={ms: [k, -k] for k, ms in enumerate(frames)})
    first = load_episodes(bag, cfg(), progress=False)
    [cached] = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # a disk filled up, a copy cut short
    with pytest.warns(UserWarning, match=rf"frame cache .*{cached.name} of bag .*bag is unreadable"):
        again = load_episodes(bag, cfg(), progress=False)
    _episodes_equal(first, again)
    _episodes_equal(first, load_episodes(bag, cfg(), progress=False))  # and the cache is whole again


def test_a_changed_config_or_bag_invalidates_the_cache(tmp_path, cfg):
    frames = [0, 100, 200, 300, 400, 500]
    bag = write_bag(tmp_path / "bag", frames, commands={ms: [k, k] for k, ms in enumerate(frames)})
    [base] = load_episodes(bag, cfg(), progress=False)
    [skip] = load_episodes(bag, cfg(frameskip=2), progress=False)
    assert len(base) == 6 and len(skip) == 3
    [small] = load_episodes(bag, cfg(image_size=8), progress=False)
    assert small.frames.shape == (6, 8, 8, 3)
    [delta] = load_episodes(bag, cfg(action_type="delta"), progress=False)
    assert not np.allclose(delta.actions, base.actions)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4
    # The cache location is not part of the key: another folder, same content.
    [moved] = load_episodes(bag, cfg(cache_dir=str(tmp_path / "other")), progress=False)
    _episodes_equal([moved], [base])

    # Re-recorded bag at the same path: the old cache entry must not be used.
    for p in bag.iterdir():
        p.unlink()
    bag.rmdir()
    write_bag(bag, frames[:4], commands={0: [9, 9]})
    [fresh] = load_episodes(bag, cfg(), progress=False)
    assert len(fresh) == 4
    np.testing.assert_array_equal(fresh.actions[:, 0], [9, 9, 9, 9])


def test_cache_off_writes_nothing_and_default_is_under_xdg_cache_home(tmp_path, monkeypatch):
    bag = write_bag(tmp_path / "bag", [0, 100, 200], commands={0: [1, 1]})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_episodes(bag, DataConfig(image_size=16, cache_dir="off"), progress=False)
    assert not (tmp_path / "xdg").exists()
    load_episodes(bag, DataConfig(image_size=16), progress=False)  # cache_dir "": the default location
    assert len(list((tmp_path / "xdg" / "jepa_wm" / "episodes").glob("bag-*.npz"))) == 1


# ---------------------------------------------------------------------- training views


def _episode(n, a_dim=2, offset=0.0, source="x"):
    t = np.arange(n)
    frames = np.broadcast_to(t[:, None, None, None], (n, 8, 8, 3)).astype(np.uint8)
    actions = np.stack([t + offset + 0.1 * k for k in range(a_dim)], 1).astype(np.float32)
    joints = np.stack([-t - offset] * 3, 1).astype(np.float32)
    return Episode(frames, actions, joints, t.astype(np.int64), source)


def test_split_episodes_by_whole_episode():
    eps = [_episode(3, source=f"e{i}") for i in range(10)]
    train, val = split_episodes(eps, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert {id(e) for e in train}.isdisjoint({id(e) for e in val})
    assert {id(e) for e in train} | {id(e) for e in val} == {id(e) for e in eps}
    assert [e.source for e in train] == sorted(e.source for e in train)  # original order kept
    again = split_episodes(eps, 0.2, seed=1)
    assert [e.source for e in again[1]] == [e.source for e in val]
    others = {tuple(e.source for e in split_episodes(eps, 0.2, seed=s)[1]) for s in range(2, 8)}
    assert len(others) > 1  # the seed chooses
    t2, v2 = split_episodes(eps[:2], 0.01)
    assert len(t2) == 1 and len(v2) == 1  # at least one of each
    t3, v3 = split_episodes(eps[:2], 0.99)
    assert len(t3) == 1 and len(v3) == 1
    t0, v0 = split_episodes(eps, 0.0)
    assert len(t0) == 10 and v0 == []
    assert split_episodes(eps[:1], 0.5) == (eps[:1], [])


def test_clip_dataset_items():
    eps = [_episode(5), _episode(3, offset=100.0)]
    ds = ClipDataset(eps, clip_len=3)
    assert len(ds) == 3 + 1
    item = ds[1]
    assert item["frames"].shape == (3, 8, 8, 3) and item["frames"].dtype == torch.uint8
    np.testing.assert_array_equal(item["frames"][:, 0, 0, 0].numpy(), [1, 2, 3])
    np.testing.assert_allclose(item["actions"].numpy(), [[1, 1.1], [2, 2.1], [3, 3.1]], rtol=1e-6)
    assert item["actions"].dtype == torch.float32
    np.testing.assert_array_equal(item["joints"][:, 0].numpy(), [-1, -2, -3])
    last = ds[3]  # the second episode's only clip
    np.testing.assert_allclose(last["actions"][:, 0].numpy(), [100, 101, 102])
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(IndexError):
        ds[-1]


def test_clip_dataset_with_frameskip_concatenates_actions():
    ds = ClipDataset([_episode(7)], clip_len=2, frameskip=3)
    assert len(ds) == 7 - 6 + 1
    item = ds[1]
    np.testing.assert_array_equal(item["frames"][:, 0, 0, 0].numpy(), [1, 4])
    # Each step's action: the 3 env actions leading to the next clip frame, concatenated.
    np.testing.assert_allclose(item["actions"].numpy(), [[1, 1.1, 2, 2.1, 3, 3.1], [4, 4.1, 5, 5.1, 6, 6.1]],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="needs 6 frames; longest has 5"):
        ClipDataset([_episode(5), _episode(4)], clip_len=3, frameskip=2)
    assert len(ClipDataset([], clip_len=3)) == 0


def test_clip_dataset_in_a_dataloader():
    loader = torch.utils.data.DataLoader(ClipDataset([_episode(6), _episode(4)], clip_len=4), batch_size=2)
    batches = list(loader)
    assert sum(b["frames"].shape[0] for b in batches) == 3 + 1
    assert batches[0]["actions"].shape == (2, 4, 2)


def test_action_stats():
    eps = [Episode(np.zeros((3, 8, 8, 3), np.uint8), np.array([[1, 5], [2, 5], [3, 5]], np.float32),
                   np.zeros((3, 2), np.float32), np.arange(3), "a"),
           Episode(np.zeros((1, 8, 8, 3), np.uint8), np.array([[6, 5]], np.float32),
                   np.zeros((1, 2), np.float32), np.arange(1), "b")]
    mean, std = action_stats(eps)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, [3.0, 5.0])
    np.testing.assert_allclose(std, [np.std([1, 2, 3, 6]), 1e-3], rtol=1e-6)  # a constant dimension is floored
    np.testing.assert_allclose(action_stats(eps, floor=0.5)[1][1], 0.5)


# ---------------------------------------------------------------------- jepa-wm collect


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    pytest.importorskip("mujoco", reason="jepa-wm collect needs mujoco")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from jepa_wm.cli import main

    out = tmp_path_factory.mktemp("collect") / "data"
    assert main(["collect", "--out", str(out), "--episodes", "2", "--steps", "10",
                 "--width", "32", "--height", "32"]) == 0
    return out


def test_collect_writes_bags_that_load_back(collected, tmp_path):
    names = sorted(p.name for p in collected.iterdir())
    assert names == ["collect_00000.yaml", "episode_00000", "episode_00001"]
    for ep in ("episode_00000", "episode_00001"):
        meta = yaml.safe_load((collected / ep / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert meta["storage_identifier"] == "mcap"
        counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
        assert counts == {"/camera/image_raw": 10, "/camera/camera_info": 10, "/joint_states": 10,
                          "/arm_controller/joint_trajectory": 10, "/object_pose": 10}
    manifest = yaml.safe_load((collected / "collect_00000.yaml").read_text())
    assert manifest["steps"] == 10 and manifest["seeds"] == [0, 1]
    assert (manifest["sim"]["width"], manifest["sim"]["height"]) == (32, 32)

    eps = load_episodes(collected, DataConfig(image_size=32, cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(eps) == 2
    for ep in eps:
        assert len(ep) == 10 and ep.frames.shape == (10, 32, 32, 3)
        assert ep.actions.shape == (10, 3) and ep.joints.shape == (10, 3)
        np.testing.assert_allclose(np.diff(ep.stamps), 100 * MS)  # control_dt, in sim time
        assert np.abs(np.diff(ep.actions, axis=0)).max() <= 0.15 + 1e-6  # the policy's max_step
        assert np.abs(np.diff(ep.joints, axis=0)).max() > 0.01  # the arm moved
        assert not np.array_equal(ep.frames[0], ep.frames[-1])  # and the camera saw it
        assert ep.objects.shape == (10, 3) and np.ptp(ep.objects[:, 2]) < 1e-3  # the puck, on the table
    # The cache keeps the object positions.
    again = load_episodes(collected, DataConfig(image_size=32, cache_dir=str(tmp_path / "cache")), progress=False)
    for a, b in zip(eps, again):
        np.testing.assert_array_equal(a.objects, b.objects)


def test_collect_episodes_reproduce_the_simulator(collected, tmp_path):
    """Episode i is seed i: the bag holds exactly what the simulator shows for that seed and those commands."""
    from jepa_wm.sim.arm import ArmSim, SimConfig
    from jepa_wm.sim.explore import ExplorationPolicy

    eps = load_episodes(collected, DataConfig(image_size=32, cache_dir=str(tmp_path / "cache")), progress=False)
    sim = ArmSim(SimConfig(width=32, height=32))
    policy = ExplorationPolicy(sim, push_fraction=0.3, max_step=0.15)  # collect's defaults
    for seed, ep in enumerate(eps):
        obs = sim.reset(seed=seed)
        policy.reset(seed)
        np.testing.assert_array_equal(ep.frames[0], obs.image)
        np.testing.assert_allclose(ep.joints[0], obs.joint_pos, atol=1e-6)
        for t in range(3):  # the policy's commands, and the frames and joints they led to
            action = policy.act(obs)
            np.testing.assert_allclose(ep.actions[t], action, atol=1e-6)
            obs = sim.step(action)
            np.testing.assert_allclose(ep.joints[t + 1], obs.joint_pos, atol=1e-5)
            np.testing.assert_array_equal(ep.frames[t + 1], obs.image)
            np.testing.assert_allclose(ep.objects[t + 1], sim.object_pos(), atol=1e-6)
    assert not np.allclose(eps[0].joints[0], eps[1].joints[0])


def test_collect_refuses_to_overwrite_an_episode(collected):
    from jepa_wm.cli import main

    before = {p: p.stat().st_mtime_ns for p in collected.rglob("*")}
    with pytest.raises(SystemExit, match="episode_00001 already exists and is not empty; refusing to overwrite"):
        main(["collect", "--out", str(collected), "--episodes", "2", "--steps", "10", "--first-index", "1"])
    assert {p: p.stat().st_mtime_ns for p in collected.rglob("*")} == before


def test_collect_object_jitter_sets_how_far_the_object_starts_from_its_place(tmp_path):
    """--object-jitter 0 starts every episode's object at the scene's place; a wider jitter spreads the starts."""
    pytest.importorskip("mujoco", reason="jepa-wm collect needs mujoco")
    from jepa_wm.cli import main

    starts = {}
    for jitter in (0.0, 0.2):
        out = tmp_path / f"jitter_{jitter}"
        assert main(["collect", "--out", str(out), "--episodes", "4", "--steps", "2", "--object-jitter", str(jitter),
                     "--width", "16", "--height", "16"]) == 0
        assert yaml.safe_load((out / "collect_00000.yaml").read_text())["sim"]["object_jitter"] == jitter
        eps = load_episodes(out, DataConfig(image_size=16, cache_dir="off"), progress=False)
        starts[jitter] = np.stack([ep.objects[0, :2] for ep in eps])
    np.testing.assert_allclose(starts[0.0], np.broadcast_to(starts[0.0][0], (4, 2)), atol=1e-6)
    offsets = np.abs(starts[0.2] - starts[0.0][0])
    assert offsets.max() <= 0.2 + 1e-6 and offsets.max() > 0.1  # beyond the default 0.1 in 4 seeded episodes


def test_collect_extends_a_dataset_into_empty_folders(tmp_path):
    pytest.importorskip("mujoco", reason="jepa-wm collect needs mujoco")
    from jepa_wm.cli import main

    out = tmp_path / "data"
    (out / "episode_00003").mkdir(parents=True)  # made ahead of time, still empty: fine
    assert main(["collect", "--out", str(out), "--episodes", "1", "--steps", "3", "--first-index", "3",
                 "--seed", "5", "--width", "16", "--height", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["collect_00003.yaml", "episode_00003"]
    [ep] = load_episodes(out, DataConfig(image_size=16, cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(ep) == 3


@pytest.mark.parametrize("flag, value, expected", [
    ("--episodes", "0", "an integer >= 1"), ("--steps", "1", "an integer >= 2"),
    ("--object-jitter", "-0.1", "a finite number >= 0"), ("--push-fraction", "2", "a number in [0, 1]"),
    ("--width", "0", "an integer >= 1"), ("--height", "0", "an integer >= 1"),
    ("--control-dt", "0", "a finite number > 0"), ("--max-step", "0", "a finite number > 0"),
    ("--workers", "0", "an integer >= 1"), ("--seed", "-1", "an integer >= 0"),
    ("--first-index", "-1", "an integer >= 0"), ("--joint-gain-scale", "-1", "a finite number >= 0"),
])
def test_collect_rejects_bad_numbers_before_writing_anything(tmp_path, capsys, flag, value, expected):
    from jepa_wm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["collect", "--out", str(tmp_path / "x"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: '{value}' is not {expected}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_failed_collect_leaves_no_manifest_or_folder(tmp_path, capsys):
    """A scene that cannot load fails the first episode: nothing may describe episodes that were never recorded."""
    pytest.importorskip("mujoco", reason="jepa-wm collect needs mujoco")
    from jepa_wm.cli import main

    out = tmp_path / "c5"
    assert main(["collect", "--out", str(out), "--episodes", "1", "--steps", "2",
                 "--scene", str(tmp_path / "nonexistent.xml")]) == 2
    assert "nonexistent.xml does not exist" in capsys.readouterr().err
    assert not out.exists()
    # Into an existing dataset: what was there stays, and no manifest is added.
    out.mkdir()
    (out / "collect_00000.yaml").write_text("earlier: run\n")
    assert main(["collect", "--out", str(out), "--episodes", "1", "--steps", "2", "--first-index", "1",
                 "--scene", str(tmp_path / "nonexistent.xml")]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["collect_00000.yaml"]
