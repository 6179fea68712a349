"""rosbag2 (MCAP) episodes: what EpisodeWriter records, what read_bag decodes, and the errors for bad bags.

Bags are real: written by the rosbags library's rosbag2 Writer (through EpisodeWriter, or directly to build
bags as other robots record them) and read back by rosbags' AnyReader.
"""

import re

import cv2
import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from jepa_wm.core.config import ConfigError
from jepa_wm.data.bags import BagError, DataConfig, EpisodeWriter, read_bag

TS = get_typestore(Stores.ROS2_HUMBLE)  # an independent typestore, not the module's
T = TS.types
JOINTS = ["shoulder", "elbow"]
MS = 1_000_000
BASE_NS = 1_700_000_000 * 1_000_000_000  # a wall-clock-like stamp, as on a real robot


def _frame(i, size=32):
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 10 * i
    img[i % size, :, 1] = 255  # a moving line, so frames differ in structure too
    return img


K = [[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]


def _object_pose(i):
    return (0.3 + 0.01 * i, -0.05 * i, 0.025), (1.0, 0.0, 0.0, 0.0)


def _write_episode(path, n=5, size=32, dt_ns=100 * MS, start_ns=0, **kw):
    with EpisodeWriter(path, JOINTS, control_dt=0.1, **kw) as w:
        for i in range(n):
            ns = start_ns + i * dt_ns
            w.write_frame(ns, _frame(i, size), [0.1 * i, -0.2 * i], [1.0, -2.0], _object_pose(i))
            w.write_command(ns, [0.1 * (i + 1), -0.2 * (i + 1)])
    return path


def _cfg(**kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("cache_dir", "off")
    return DataConfig(**kw)


# ---------------------------------------------------------------------- bags as other robots record them


def _header(ns, frame_id=""):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id=frame_id)


def image_msg(ns, rgb=None, encoding="rgb8", data=None, height=None, width=None, step=None):
    rgb = _frame(0, 16) if rgb is None else rgb
    h, w = rgb.shape[:2]
    data = rgb.reshape(-1) if data is None else np.frombuffer(bytes(data), np.uint8)
    return T["sensor_msgs/msg/Image"](header=_header(ns, "cam"), height=height or h, width=width or w,
                                      encoding=encoding, is_bigendian=0, step=step or 3 * w, data=data)


def compressed_msg(ns, rgb):
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=_header(ns, "cam"), format="rgb8; png compressed bgr8",
                                                data=png.reshape(-1))


def joint_state_msg(ns, names, pos):
    return T["sensor_msgs/msg/JointState"](header=_header(ns), name=list(names),
                                           position=np.asarray(pos, np.float64), velocity=np.zeros(0),
                                           effort=np.zeros(0))


def trajectory_msg(ns, names, pos):
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(pos, np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
        effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=100 * MS))
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(ns), joint_names=list(names), points=[point])


def float_array_msg(values):
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, np.float64))


def write_bag(path, messages):
    """messages: [(topic, bag_time_ns, msg)]; one connection per topic, typed by the first message."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, ns, msg in messages:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=TS)
            w.write(conns[topic], ns, TS.serialize_cdr(msg, msg.__msgtype__))
    return path


def robot_bag(path, n=4, image=None, joints=True, commands=True, dt_ns=100 * MS):
    msgs = []
    for i in range(n):
        ns = BASE_NS + i * dt_ns
        msgs.append(image(ns, i) if image else ("/camera/image_raw", ns, image_msg(ns, _frame(i, 16))))
        if joints:
            msgs.append(("/joint_states", ns, joint_state_msg(ns, JOINTS, [i, -i])))
        if commands:
            msgs.append(("/arm_controller/joint_trajectory", ns, trajectory_msg(ns, JOINTS, [i + 1, -i - 1])))
    return write_bag(path, msgs)


# ---------------------------------------------------------------------- EpisodeWriter


def test_episode_writer_records_what_a_ros2_recorder_would(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=5, camera_matrix=K, object_pose_topic="/object_pose")
    files = sorted(p.name for p in bag.iterdir())
    assert "metadata.yaml" in files and any(f.endswith(".mcap") for f in files)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap"
    assert meta["message_count"] == 25
    types = {t["topic_metadata"]["name"]: t["topic_metadata"]["type"] for t in meta["topics_with_message_count"]}
    assert types == {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
        "/object_pose": "geometry_msgs/msg/PoseStamped",
    }
    for f in meta["files"]:
        assert (bag / f["path"]).is_file()

    # Another reader, with its own typestore, sees the same topics and decodes every message.
    with AnyReader([bag], default_typestore=TS) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == types
        got = {}
        for conn, ns, raw in reader.messages():
            got.setdefault(conn.topic, []).append((ns, reader.deserialize(raw, conn.msgtype)))
    assert {k: len(v) for k, v in got.items()} == {k: 5 for k in types}

    ns, img = got["/camera/image_raw"][3]
    assert ns == 300 * MS
    assert (img.encoding, img.height, img.width, img.step, img.is_bigendian) == ("rgb8", 32, 32, 96, 0)
    assert img.header.frame_id == "camera"
    assert img.header.stamp.sec * 10**9 + img.header.stamp.nanosec == 300 * MS
    np.testing.assert_array_equal(np.asarray(img.data).reshape(32, 32, 3), _frame(3))

    _, info = got["/camera/camera_info"][3]
    assert (info.width, info.height, info.distortion_model) == (32, 32, "plumb_bob")
    np.testing.assert_array_equal(info.k, np.reshape(K, -1))
    np.testing.assert_array_equal(info.p, [40, 0, 16, 0, 0, 40, 16, 0, 0, 0, 1, 0])
    assert info.header.stamp == img.header.stamp

    _, pose = got["/object_pose"][3]
    assert pose.header.frame_id == "world" and pose.header.stamp == img.header.stamp
    p, q = pose.pose.position, pose.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z, q.w, q.x, q.y, q.z], [0.33, -0.15, 0.025, 1, 0, 0, 0])

    _, js = got["/joint_states"][3]
    assert list(js.name) == JOINTS
    np.testing.assert_allclose(js.position, [0.3, -0.6])
    np.testing.assert_allclose(js.velocity, [1.0, -2.0])

    _, traj = got["/arm_controller/joint_trajectory"][3]
    assert list(traj.joint_names) == JOINTS and len(traj.points) == 1
    np.testing.assert_allclose(traj.points[0].positions, [0.4, -0.8])
    assert (traj.points[0].time_from_start.sec, traj.points[0].time_from_start.nanosec) == (0, 100 * MS)


def test_episode_writer_without_intrinsics_records_an_uncalibrated_camera_and_no_object(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=2)  # an object pose given, but no topic to write it on
    with AnyReader([bag], default_typestore=TS) as reader:
        assert "/object_pose" not in {c.topic for c in reader.connections}
        infos = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                 if c.topic == "/camera/camera_info"]
    assert len(infos) == 2 and not np.any(infos[0].k)  # CameraInfo: K all zeros = uncalibrated


def test_episode_writer_custom_topics_and_no_overwrite(tmp_path):
    bag = tmp_path / "ep"
    with EpisodeWriter(bag, JOINTS, image_topic="/wrist/color/image", joint_state_topic="/arm/joint_states",
                       action_topic="/arm/cmd") as w:
        for i in range(3):
            w.write_frame(i * 100 * MS, _frame(i), [i, i], [0, 0])
            w.write_command(i * 100 * MS, [i, i])
        assert w.frames == 3
    with AnyReader([bag], default_typestore=TS) as reader:
        assert {c.topic for c in reader.connections} == {"/wrist/color/image", "/wrist/color/camera_info",
                                                         "/arm/joint_states", "/arm/cmd"}
    streams = read_bag(bag, _cfg(image_topic="/wrist/color/image", joint_state_topic="/arm/joint_states",
                                 action_topic="/arm/cmd"))
    assert len(streams.images) == 3
    before = sorted((p.name, p.stat().st_size) for p in bag.iterdir())
    with pytest.raises(Exception, match="exists"):
        EpisodeWriter(bag, JOINTS)
    assert sorted((p.name, p.stat().st_size) for p in bag.iterdir()) == before


# ---------------------------------------------------------------------- read_bag


def test_read_bag_round_trip(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=5)
    s = read_bag(bag, _cfg())
    assert s.joint_names == JOINTS
    np.testing.assert_array_equal(s.image_stamps, np.arange(5) * 100 * MS)
    assert s.images.shape == (5, 32, 32, 3) and s.images.dtype == np.uint8
    for i in range(5):
        np.testing.assert_array_equal(s.images[i], _frame(i))
    np.testing.assert_array_equal(s.joint_stamps, s.image_stamps)
    np.testing.assert_allclose(s.joint_pos, np.stack([0.1 * np.arange(5), -0.2 * np.arange(5)], 1))
    np.testing.assert_array_equal(s.command_stamps, s.image_stamps)
    # One-point trajectories, each point to be reached control_dt after its command.
    np.testing.assert_allclose(s.commands[:, 0], np.stack([0.1 * np.arange(1, 6), -0.2 * np.arange(1, 6)], 1))
    np.testing.assert_array_equal(s.command_offsets, [[100 * MS]] * 5)


def test_read_bag_reads_the_object_pose_where_the_bag_has_it(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=5, object_pose_topic="/object_pose")
    s = read_bag(bag, _cfg(object_pose_topic="/object_pose"))
    np.testing.assert_array_equal(s.object_stamps, s.image_stamps)
    np.testing.assert_allclose(s.object_pos, [_object_pose(i)[0] for i in range(5)])
    # Optional: a bag without it loads all the same, without object poses; so does a config without the topic.
    for path, topic in [(_write_episode(tmp_path / "plain", n=3), "/object_pose"), (bag, "")]:
        s = read_bag(path, _cfg(object_pose_topic=topic))
        assert s.object_pos.shape == (0, 3) and len(s.images) in (3, 5)


def test_read_bag_resizes_and_reorders_joints(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=3, size=64)
    s = read_bag(bag, _cfg(image_size=16, joint_names=["elbow", "shoulder"]))
    assert s.images.shape == (3, 16, 16, 3)
    assert s.images[2, ..., 0].mean() == pytest.approx(20, abs=1)  # the red level survives resizing
    assert s.joint_names == ["elbow", "shoulder"]
    np.testing.assert_allclose(s.joint_pos[2], [-0.4, 0.2])
    np.testing.assert_allclose(s.commands[2, 0], [-0.6, 0.3])


def test_read_bag_without_the_configured_joints_names_them_and_the_bags(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=3)
    with pytest.raises(BagError, match=re.escape("no joint states for joints ['wrist'] on topic /joint_states "
                                                 "(3 messages, naming joints ['shoulder', 'elbow']); set "
                                                 "data.joint_names to joints the bag has")):
        read_bag(bag, _cfg(joint_names=["wrist"]))
    with Writer(tmp_path / "silent", version=9, storage_plugin=StoragePlugin.MCAP) as w:  # the connection, no message
        image = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS)
        w.write(image, BASE_NS, TS.serialize_cdr(image_msg(BASE_NS), "sensor_msgs/msg/Image"))
    with pytest.raises(BagError, match=re.escape("no joint states for joints ['shoulder', 'elbow'] on topic "
                                                 "/joint_states (0 messages)")):
        read_bag(tmp_path / "silent", _cfg(image_size=16, action_type="delta", joint_names=JOINTS))
    with pytest.raises(BagError, match=re.escape("no joint states on topic /joint_states (0 messages)")):
        read_bag(tmp_path / "silent", _cfg(image_size=16, action_type="delta"))


def _jittered_bag(path, joint_states_first):
    """A recorded arm whose joint_state_broadcaster lists a gripper too, in its own order; the controller's
    commands name the arm's joints. Which topic's first message the recorder received first is chance."""
    msgs = []
    for i in range(3):
        ns = BASE_NS + i * 100 * MS
        first = ns + (0 if joint_states_first else 2 * MS)
        msgs.append(("/camera/image_raw", ns + 10 * MS, image_msg(ns, _frame(i, 16))))
        msgs.append(("/joint_states", first, joint_state_msg(ns, ["gripper", "elbow", "shoulder"], [0.01, -i, i])))
        msgs.append(("/arm_controller/joint_trajectory", ns + 1 * MS, trajectory_msg(ns, JOINTS, [i + 1, -i - 1])))
    return write_bag(path, sorted(msgs, key=lambda m: m[1]))


def test_without_joint_names_the_commands_set_the_joint_order(tmp_path):
    for joint_states_first in (True, False):
        s = read_bag(_jittered_bag(tmp_path / f"bag_{joint_states_first}", joint_states_first), _cfg(image_size=16))
        assert s.joint_names == JOINTS
        np.testing.assert_allclose(s.joint_pos, [[0, 0], [1, -1], [2, -2]])
        np.testing.assert_allclose(s.commands[:, 0], [[1, -1], [2, -2], [3, -3]])


def test_read_bag_of_a_recorded_robot(tmp_path):
    """Another driver's bag: real-time stamps, messages out of order, another joint group on /joint_states."""
    msgs = []
    for i in [2, 0, 3, 1]:
        ns = BASE_NS + i * 100 * MS
        msgs.append(("/camera/image_raw", ns + 5 * MS, image_msg(ns, _frame(i, 16))))  # received 5 ms late
        msgs.append(("/joint_states", ns, joint_state_msg(ns, ["gripper"], [9.0])))  # another group
        msgs.append(("/joint_states", ns, joint_state_msg(ns, ["elbow", "shoulder", "gripper"], [-i, i, 9.0])))
        msgs.append(("/arm_controller/joint_trajectory", ns, trajectory_msg(ns, JOINTS, [i + 1, -i - 1])))
    bag = write_bag(tmp_path / "robot", msgs)

    s = read_bag(bag, _cfg(image_size=16, joint_names=JOINTS))
    np.testing.assert_array_equal(s.image_stamps, BASE_NS + np.arange(4) * 100 * MS)  # header stamps, sorted
    for i in range(4):
        np.testing.assert_array_equal(s.images[i], _frame(i, 16))
    np.testing.assert_allclose(s.joint_pos, np.stack([np.arange(4), -np.arange(4)], 1))  # gripper-only skipped
    np.testing.assert_allclose(s.commands[:, 0, 0], np.arange(1, 5))

    # stamps="receive": bag (receive) time instead of the header stamp.
    r = read_bag(bag, _cfg(image_size=16, joint_names=JOINTS, stamps="receive"))
    np.testing.assert_array_equal(r.image_stamps, BASE_NS + np.arange(4) * 100 * MS + 5 * MS)


def _clock_bag(path, n=4, image_offset_ns=0, command_offset_ns=0, images_from=0, commands_from=0):
    """A recorded arm, 10 Hz; the camera (or command sender) stamps headers `offset` away from the joint states,
    and starts at step `images_from` (`commands_from`)."""
    msgs = []
    for i in range(n):
        ns = BASE_NS + i * 100 * MS
        if i >= images_from:
            msgs.append(("/camera/image_raw", ns + 20 * MS, image_msg(ns + image_offset_ns, _frame(i % 25, 16))))
        msgs.append(("/joint_states", ns + 1 * MS, joint_state_msg(ns, JOINTS, [i, -i])))
        if i >= commands_from:
            msgs.append(("/arm_controller/joint_trajectory", ns + 1 * MS,
                         trajectory_msg(ns + command_offset_ns, JOINTS, [i + 1, -i - 1])))
    return write_bag(path, sorted(msgs, key=lambda m: m[1]))


def test_frames_stamped_on_another_clock_are_refused(tmp_path):
    """Interpolated to frames 1000 s away, every joint state and action would be the same held value."""
    bag = _clock_bag(tmp_path / "camera_clock", image_offset_ns=-1000 * 10**9)
    with pytest.raises(BagError, match=re.escape(
            f"bag {bag}: camera frames are stamped 1699999000.000 s to 1699999000.300 s, joint states on "
            "/joint_states 1700000000.000 s to 1700000000.300 s: they hardly overlap, so their header stamps come "
            "from different clocks; set data.stamps: receive to use the recorder's receive times")):
        read_bag(bag, _cfg(image_size=16))
    s = read_bag(bag, _cfg(image_size=16, stamps="receive"))
    np.testing.assert_allclose(s.joint_pos, [[0, 0], [1, -1], [2, -2], [3, -3]])

    bag = _clock_bag(tmp_path / "command_clock", command_offset_ns=3600 * 10**9)
    with pytest.raises(BagError, match=re.escape(
            "camera frames are stamped 1700000000.000 s to 1700000000.300 s, commands on "
            "/arm_controller/joint_trajectory 1700003600.000 s to 1700003600.300 s: they hardly overlap")):
        read_bag(bag, _cfg(image_size=16))
    assert len(read_bag(bag, _cfg(image_size=16, action_type="delta")).images) == 4  # commands unused


def test_on_the_recorder_clock_streams_that_miss_each_other_are_named_not_blamed_on_clocks(tmp_path):
    # The camera recorded for the first 3 s, the commands only from 5 s on: one clock, two moments.
    msgs = []
    for i in range(80):
        ns = BASE_NS + i * 100 * MS
        if i < 30:
            msgs.append(("/camera/image_raw", ns, image_msg(ns, _frame(i % 25, 16))))
        msgs.append(("/joint_states", ns, joint_state_msg(ns, JOINTS, [i, -i])))
        if i >= 50:
            msgs.append(("/arm_controller/joint_trajectory", ns, trajectory_msg(ns, JOINTS, [i + 1, -i - 1])))
    bag = write_bag(tmp_path / "apart", msgs)
    with pytest.raises(BagError, match=re.escape(
            "commands on /arm_controller/joint_trajectory 1700000005.000 s to 1700000007.900 s: they hardly "
            "overlap; record both for the whole episode")):
        read_bag(bag, _cfg(image_size=16, stamps="receive"))


def test_commands_that_start_late_or_frames_that_start_late_are_one_clock(tmp_path):
    # 10 s recordings: the operator commands only in the last second, or the camera starts after 6 s.
    s = read_bag(_clock_bag(tmp_path / "late_commands", n=100, commands_from=90), _cfg(image_size=16))
    assert (len(s.images), len(s.command_stamps)) == (100, 10)
    s = read_bag(_clock_bag(tmp_path / "late_camera", n=100, images_from=60), _cfg(image_size=16))
    assert (len(s.images), len(s.joint_stamps)) == (40, 100)


def test_zero_header_stamp_falls_back_to_bag_time(tmp_path):
    msgs = []
    for i in range(3):
        ns = BASE_NS + i * 100 * MS
        msgs.append(("/camera/image_raw", ns, image_msg(0, _frame(i, 16))))
        msgs.append(("/joint_states", ns, joint_state_msg(ns, JOINTS, [i, i])))
    bag = write_bag(tmp_path / "b", msgs)
    s = read_bag(bag, _cfg(image_size=16, action_type="delta"))
    np.testing.assert_array_equal(s.image_stamps, BASE_NS + np.arange(3) * 100 * MS)


def test_compressed_images_on_the_compressed_topic(tmp_path):
    bag = robot_bag(tmp_path / "b", image=lambda ns, i: ("/camera/image_raw/compressed", ns,
                                                         compressed_msg(ns, _frame(i, 16))))
    s = read_bag(bag, _cfg(image_size=16))
    assert s.images.shape == (4, 16, 16, 3)
    for i in range(4):
        np.testing.assert_array_equal(s.images[i], _frame(i, 16))


def test_other_image_encodings_in_a_bag(tmp_path):
    def bgr(ns, i):
        return "/camera/image_raw", ns, image_msg(ns, np.ascontiguousarray(_frame(i, 16)[..., ::-1]), "bgr8")

    s = read_bag(robot_bag(tmp_path / "bgr", image=bgr), _cfg(image_size=16))
    np.testing.assert_array_equal(s.images[3], _frame(3, 16))

    def mono(ns, i):
        gray = np.full((16, 16), 50 * i, np.uint8)
        return "/camera/image_raw", ns, T["sensor_msgs/msg/Image"](
            header=_header(ns), height=16, width=16, encoding="mono8", is_bigendian=0, step=20,
            data=np.pad(gray, ((0, 0), (0, 4))).reshape(-1))  # padded rows

    s = read_bag(robot_bag(tmp_path / "mono", image=mono), _cfg(image_size=16))
    np.testing.assert_array_equal(s.images[2], 100)


def test_float64_multiarray_commands_take_the_order_of_data_joint_names(tmp_path):
    """A forward_command_controller's array names no joints: its values are in the controller's `joints` order,
    which data.joint_names must give; the joint states list the joints in another order."""
    msgs = []
    for i in range(3):
        ns = BASE_NS + i * 100 * MS
        msgs.append(("/camera/image_raw", ns, image_msg(ns)))
        msgs.append(("/joint_states", ns, joint_state_msg(ns, ["elbow", "shoulder"], [-i, i])))
        msgs.append(("/arm_controller/commands", ns, float_array_msg([i + 0.5, -i])))  # shoulder, elbow
    bag = write_bag(tmp_path / "b", msgs)
    s = read_bag(bag, _cfg(image_size=16, action_topic="/arm_controller/commands", joint_names=JOINTS))
    assert s.joint_names == JOINTS
    np.testing.assert_allclose(s.joint_pos, [[0, 0], [1, -1], [2, -2]])
    np.testing.assert_allclose(s.commands[:, 0], [[0.5, 0], [1.5, -1], [2.5, -2]])
    with pytest.raises(BagError, match=re.escape(
            f"bag {bag}: topic /arm_controller/commands carries std_msgs/msg/Float64MultiArray commands, which name "
            "no joints; set data.joint_names to the controller's `joints` parameter, in its order")):
        read_bag(bag, _cfg(image_size=16, action_topic="/arm_controller/commands"))

    bad = write_bag(tmp_path / "bad", msgs[:2] + [("/arm_controller/commands", BASE_NS, float_array_msg([1.0]))])
    with pytest.raises(BagError, match=r"commands on topic /arm_controller/commands do not have one value per joint"):
        read_bag(bad, _cfg(image_size=16, action_topic="/arm_controller/commands", joint_names=JOINTS))


def test_an_action_topic_without_commands_for_these_joints_is_a_bag_error(tmp_path):
    """Else every action would be the held first position: a model trained on it ignores its commands."""
    msgs = []
    for i in range(3):
        ns = BASE_NS + i * 100 * MS
        msgs.append(("/camera/image_raw", ns, image_msg(ns)))
        msgs.append(("/joint_states", ns, joint_state_msg(ns, JOINTS, [i, -i])))
        msgs.append(("/arm_controller/joint_trajectory", ns, trajectory_msg(ns, ["gripper"], [0.01 * i])))
    other_group = write_bag(tmp_path / "gripper", msgs)
    with pytest.raises(BagError, match=re.escape(
            "gripper: no commands for joints ['shoulder', 'elbow'] on action topic /arm_controller/joint_trajectory "
            "(3 messages, naming joints ['gripper']); record the controller that drives these joints, set "
            "data.joint_names to the joints it commands, or set data.action_type: delta")):
        read_bag(other_group, _cfg(image_size=16, joint_names=JOINTS))
    # Without data.joint_names the commands name the joints, and the joint states lack them.
    with pytest.raises(BagError, match=re.escape(
            "gripper: no joint states for joints ['gripper'] on topic /joint_states (3 messages, naming joints "
            "['shoulder', 'elbow']); set data.joint_names")):
        read_bag(other_group, _cfg(image_size=16))
    with Writer(tmp_path / "silent", version=9, storage_plugin=StoragePlugin.MCAP) as w:  # the connection, no message
        conns = {t: w.add_connection(t, ty, typestore=TS) for t, ty in [
            ("/camera/image_raw", "sensor_msgs/msg/Image"), ("/joint_states", "sensor_msgs/msg/JointState"),
            ("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory")]}
        for topic, ns, msg in msgs[:2]:
            w.write(conns[topic], ns, TS.serialize_cdr(msg, conns[topic].msgtype))
    with pytest.raises(BagError, match=re.escape("silent: no commands on action topic "
                                                 "/arm_controller/joint_trajectory (0 messages); record")):
        read_bag(tmp_path / "silent", _cfg(image_size=16))
    with pytest.raises(BagError, match=re.escape("silent: no commands for joints ['shoulder', 'elbow'] on action "
                                                 "topic /arm_controller/joint_trajectory (0 messages); record")):
        read_bag(tmp_path / "silent", _cfg(image_size=16, joint_names=JOINTS))


def test_delta_actions_need_no_action_topic(tmp_path):
    bag = robot_bag(tmp_path / "b", commands=False)
    s = read_bag(bag, _cfg(image_size=16, action_type="delta"))
    assert len(s.images) == 4 and s.commands.shape == (0, 1, 2)
    with pytest.raises(BagError, match="no action topic /arm_controller/joint_trajectory"):
        read_bag(bag, _cfg(image_size=16))


# ---------------------------------------------------------------------- bad bags


def test_truncated_mcap_names_the_bag(tmp_path):
    bag = _write_episode(tmp_path / "cut_episode", n=6)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])
    with pytest.raises(BagError, match=re.escape(f"bag {bag}")) as e:
        read_bag(bag, _cfg())
    assert "Traceback" not in str(e.value)


def test_no_metadata_is_a_bag_error(tmp_path):
    bag = _write_episode(tmp_path / "ep", n=3)
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=re.escape(f"bag {bag}: no metadata.yaml")):
        read_bag(bag, _cfg())
    with pytest.raises(BagError, match="no metadata.yaml"):
        read_bag(tmp_path / "not_there", _cfg())


@pytest.mark.parametrize("cfg, topic, what", [
    (dict(image_topic="/wrist/image_raw"), "/wrist/image_raw", "image"),
    (dict(joint_state_topic="/arm/joint_states"), "/arm/joint_states", "joint state"),
    (dict(action_topic="/arm/commands"), "/arm/commands", "action"),
])
def test_missing_topic_names_the_bag_and_the_topic(tmp_path, cfg, topic, what):
    bag = _write_episode(tmp_path / "ep", n=3)
    with pytest.raises(BagError) as e:
        read_bag(bag, _cfg(**cfg))
    msg = str(e.value)
    assert msg.startswith(f"bag {bag}:")
    assert f"no {what} topic {topic}" in msg
    assert "/joint_states" in msg and "/camera/image_raw" in msg  # what the bag has instead


def test_wrong_message_type_names_topic_and_types(tmp_path):
    ns = BASE_NS
    # A camera topic carrying joint states, and joint states published as a string.
    bag = write_bag(tmp_path / "b", [("/camera/image_raw", ns, joint_state_msg(ns, JOINTS, [0, 0])),
                                      ("/joint_states", ns, T["std_msgs/msg/String"](data="hello"))])
    with pytest.raises(BagError, match=re.escape(f"bag {bag}: topic /camera/image_raw has type "
                                                 "sensor_msgs/msg/JointState, expected sensor_msgs/msg/Image")):
        read_bag(bag, _cfg(image_size=16))
    bag2 = write_bag(tmp_path / "b2", [("/camera/image_raw", ns, image_msg(ns)),
                                       ("/joint_states", ns, T["std_msgs/msg/String"](data="hello"))])
    with pytest.raises(BagError, match=re.escape(f"bag {bag2}: topic /joint_states has type std_msgs/msg/String, "
                                                 "expected sensor_msgs/msg/JointState")):
        read_bag(bag2, _cfg(image_size=16, action_type="delta"))
    bag3 = robot_bag(tmp_path / "b3", commands=False)
    with pytest.raises(BagError, match="topic /joint_states has type sensor_msgs/msg/JointState, expected "
                                       "trajectory_msgs/msg/JointTrajectory or std_msgs/msg/Float64MultiArray"):
        read_bag(bag3, _cfg(image_size=16, action_topic="/joint_states"))
    with pytest.raises(BagError, match="topic /joint_states has type sensor_msgs/msg/JointState, expected "
                                       "geometry_msgs/msg/PoseStamped"):
        read_bag(bag3, _cfg(image_size=16, action_type="delta", object_pose_topic="/joint_states"))


def test_malformed_frame_in_a_bag_names_bag_and_topic(tmp_path):
    def short(ns, i):  # the last frame lost half its data
        rgb = _frame(i, 16)
        data = rgb.tobytes() if i < 3 else rgb.tobytes()[:300]
        return "/camera/image_raw", ns, image_msg(ns, rgb, data=data)

    bag = robot_bag(tmp_path / "short", image=short)
    with pytest.raises(BagError, match=re.escape(f"bag {bag}: topic /camera/image_raw: rgb8 image data too short")):
        read_bag(bag, _cfg(image_size=16))

    bag = robot_bag(tmp_path / "enc", image=lambda ns, i: ("/camera/image_raw", ns, image_msg(ns, encoding="nv21")))
    with pytest.raises(BagError, match=re.escape(f"bag {bag}: topic /camera/image_raw: unsupported image encoding")):
        read_bag(bag, _cfg(image_size=16))


def test_empty_topics_are_bag_errors(tmp_path):
    ns = BASE_NS
    only_states = write_bag(tmp_path / "a", [("/camera/image_raw/compressed", ns, compressed_msg(ns, _frame(0, 16))),
                                              ("/joint_states", ns, joint_state_msg(ns, JOINTS, [0, 0]))])
    ok = read_bag(only_states, _cfg(image_size=16, action_type="delta"))
    assert len(ok.images) == 1
    # A bag whose image connection exists but holds no frame.
    with Writer(tmp_path / "empty", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=TS)
        js = w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=TS)
        w.write(js, ns, TS.serialize_cdr(joint_state_msg(ns, JOINTS, [0, 0]), "sensor_msgs/msg/JointState"))
    with pytest.raises(BagError, match="no frames on image topic /camera/image_raw"):
        read_bag(tmp_path / "empty", _cfg(image_size=16, action_type="delta"))


BAD_DATA_SETTINGS = [
    (dict(action_type="deltas"), "data.action_type is 'deltas'; use 'command' or 'delta'"),
    (dict(stamps="recv"), "data.stamps is 'recv'; use 'header' or 'receive'"),
    (dict(frameskip=0), "data.frameskip is 0; it must be 1 or more"),
    (dict(image_size=4), "data.image_size is 4; it must be 8 or more"),
]


@pytest.mark.parametrize("kw, message", BAD_DATA_SETTINGS)
def test_data_config_rejects_bad_settings(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DataConfig(**kw)


@pytest.mark.parametrize("kw, message", BAD_DATA_SETTINGS[:3])
def test_a_bad_data_setting_ends_train_in_one_line(tmp_path, capsys, kw, message):
    from jepa_wm.cli import main
    from jepa_wm.resources import config_file

    config = yaml.safe_load(config_file("train.yaml").read_text())
    config["data"].update(kw)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    bag = _write_episode(tmp_path / "ep", n=3)
    assert main(["train", "--config", str(tmp_path / "train.yaml"), "--bags", str(bag),
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"jepa-wm train: error: {message}\n"


def test_data_config_defaults_match_the_writer():
    cfg = DataConfig()
    assert (cfg.image_topic, cfg.joint_state_topic, cfg.action_topic) == (
        "/camera/image_raw", "/joint_states", "/arm_controller/joint_trajectory")
    assert (cfg.action_type, cfg.frameskip, cfg.stamps) == ("command", 1, "header")
    from jepa_wm.cli.collect import OBJECT_POSE_TOPIC
    assert cfg.object_pose_topic == OBJECT_POSE_TOPIC
