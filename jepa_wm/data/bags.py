"""rosbag2 I/O without ROS: write episodes as a ROS 2 recorder would, read any robot's bags.

Writing uses the `rosbags` library's rosbag2 Writer with MCAP storage (ROS 2's
default), so `ros2 bag info/play` and every MCAP tool read the episodes.
Topics and types are the ones a ros2_control arm with a camera offers:

    /camera/image_raw                  sensor_msgs/msg/Image (rgb8)
    /camera/camera_info                sensor_msgs/msg/CameraInfo
    /joint_states                      sensor_msgs/msg/JointState
    /arm_controller/joint_trajectory   trajectory_msgs/msg/JointTrajectory (the command)
    /object_pose                       geometry_msgs/msg/PoseStamped (optional: a tracked object, as from
                                       motion capture or a fiducial tracker; the simulator knows it)

Reading goes through `rosbags.highlevel.AnyReader`, driven by topic names
(`DataConfig`), so bags recorded on a real robot load as they are: any image
encoding, CompressedImage, commands as JointTrajectory (one point or a planned
trajectory of several) or Float64MultiArray (in data.joint_names' order).
Anything wrong with a bag raises BagError naming the bag and the topic.
Input bags are only ever opened for reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from jepa_wm.core.config import ConfigError
from jepa_wm.data.images import ImageFormatError, compressed_to_rgb, image_to_rgb, resize_rgb, rgb_to_image_fields

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)  # message definitions unchanged through Kilted

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
JOINT_STATE = "sensor_msgs/msg/JointState"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
FLOAT_ARRAY = "std_msgs/msg/Float64MultiArray"
POSE = "geometry_msgs/msg/PoseStamped"


class BagError(ValueError):
    pass


@dataclass
class DataConfig:
    """How to turn a robot's bags into training episodes."""

    image_topic: str = "/camera/image_raw"  # Image, or CompressedImage (also found at <image_topic>/compressed)
    joint_state_topic: str = "/joint_states"
    action_topic: str = "/arm_controller/joint_trajectory"  # JointTrajectory or Float64MultiArray
    action_type: str = "command"  # "command": commanded positions; "delta": next joint state minus current
    # Order of joints and actions. Empty: the action topic's JointTrajectory joint_names (action_type delta: the
    # first joint state's); Float64MultiArray commands name no joints, so they need it set.
    joint_names: list[str] = field(default_factory=list)
    image_size: int = 64
    frameskip: int = 1  # keep every k-th camera frame (a 30 Hz camera with 3 gives 10 Hz steps)
    max_gap_s: float = 1.0  # a longer gap between camera frames starts a new episode
    stamps: str = "header"  # "header": header.stamp where set (else bag time); "receive": bag time for all
    cache_dir: str = ""  # decoded-episode cache; "" = ~/.cache/jepa_wm/episodes, "off" = no cache
    # PoseStamped of a tracked object; "" = none. Read where a bag has it, never required: training only reports
    # how well a linear probe reads the object's position from the latent (a latent can drop the object).
    object_pose_topic: str = "/object_pose"

    def __post_init__(self):
        if self.action_type not in ("command", "delta"):
            raise ConfigError(f"data.action_type is {self.action_type!r}; use 'command' or 'delta'")
        if self.stamps not in ("header", "receive"):
            raise ConfigError(f"data.stamps is {self.stamps!r}; use 'header' or 'receive'")
        if self.frameskip < 1:
            raise ConfigError(f"data.frameskip is {self.frameskip}; it must be 1 or more")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size is {self.image_size}; it must be 8 or more")


# ---------------------------------------------------------------------- writing


def _time(ns: int):
    return TYPESTORE.types["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _duration(seconds: float):
    ns = int(round(seconds * 1e9))
    return TYPESTORE.types["builtin_interfaces/msg/Duration"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ns: int, frame_id: str = ""):
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame_id)


class EpisodeWriter:
    """One rosbag2 (MCAP) directory per episode: camera, camera_info, joint_states and commands, stamped in sim time,
    and the object's pose where `object_pose_topic` is set.

    `camera_matrix` is the camera's K (3, 3); None records an uncalibrated camera (K all zeros, as CameraInfo
    specifies). Use as a context manager; `path` must not exist yet (rosbag2 never appends).
    """

    def __init__(self, path, joint_names, control_dt: float = 0.1, frame_id: str = "camera",
                 image_topic: str = "/camera/image_raw", joint_state_topic: str = "/joint_states",
                 action_topic: str = "/arm_controller/joint_trajectory", camera_matrix=None,
                 object_pose_topic: str = "", world_frame_id: str = "world"):
        self.path = Path(path)
        self.joint_names = list(joint_names)
        self.control_dt = control_dt
        self.frame_id, self.world_frame_id = frame_id, world_frame_id
        self.k = np.zeros((3, 3)) if camera_matrix is None else np.asarray(camera_matrix, np.float64).reshape(3, 3)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        info_topic = image_topic.rsplit("/", 1)[0] + "/camera_info"
        add = lambda topic, t: self._writer.add_connection(topic, t, typestore=TYPESTORE)  # noqa: E731
        self._conn = {"image": add(image_topic, IMAGE), "info": add(info_topic, CAMERA_INFO),
                      "joints": add(joint_state_topic, JOINT_STATE), "action": add(action_topic, TRAJECTORY)}
        if object_pose_topic:
            self._conn["object"] = add(object_pose_topic, POSE)
        self.frames = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, key, ns, msg):
        self._writer.write(self._conn[key], ns, TYPESTORE.serialize_cdr(msg, msg.__msgtype__))

    def write_frame(self, stamp_ns: int, image, joint_pos, joint_vel, object_pose=None):
        """The camera frame (+ CameraInfo), the joint state measured at `stamp_ns` and, with an object pose topic,
        `object_pose` ((x, y, z), quaternion (w, x, y, z)) in the world frame."""
        types = TYPESTORE.types
        fields = rgb_to_image_fields(image)
        header = _header(stamp_ns, self.frame_id)
        self._write("image", stamp_ns, types[IMAGE](header=header, is_bigendian=0, **fields))
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        info = types[CAMERA_INFO](
            header=header, height=fields["height"], width=fields["width"], distortion_model="plumb_bob",
            d=np.zeros(5), k=self.k.reshape(-1), r=np.eye(3).reshape(-1),
            p=np.hstack([self.k, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0, roi=roi)
        self._write("info", stamp_ns, info)
        js = types[JOINT_STATE](header=_header(stamp_ns), name=self.joint_names,
                                position=np.asarray(joint_pos, np.float64), velocity=np.asarray(joint_vel, np.float64),
                                effort=np.zeros(0))
        self._write("joints", stamp_ns, js)
        if "object" in self._conn and object_pose is not None:
            (x, y, z), (qw, qx, qy, qz) = object_pose
            pose = types["geometry_msgs/msg/Pose"](
                position=types["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=float(z)),
                orientation=types["geometry_msgs/msg/Quaternion"](x=float(qx), y=float(qy), z=float(qz), w=float(qw)))
            self._write("object", stamp_ns, types[POSE](header=_header(stamp_ns, self.world_frame_id), pose=pose))
        self.frames += 1

    def write_command(self, stamp_ns: int, positions):
        """The joint targets commanded at `stamp_ns`, as a one-point trajectory reaching them in control_dt."""
        types = TYPESTORE.types
        point = types["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.asarray(positions, np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
            effort=np.zeros(0), time_from_start=_duration(self.control_dt))
        self._write("action", stamp_ns, types[TRAJECTORY](header=_header(stamp_ns), joint_names=self.joint_names,
                                                          points=[point]))


# ---------------------------------------------------------------------- reading


@dataclass
class BagStreams:
    """The decoded topics of one bag, each sorted by stamp (ns)."""

    image_stamps: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, S, S, 3) uint8, resized to image_size
    joint_names: list[str]
    joint_stamps: np.ndarray  # (M,) int64
    joint_pos: np.ndarray  # (M, J) float64, in joint_names order
    command_stamps: np.ndarray  # (K,) int64 when each command was issued (empty for action_type "delta")
    # (K, P, J) float64: each command's trajectory points (P: the most any command has; shorter ones repeat their
    # last point), and (K, P) int64 when each is to be reached, in ns after the command's stamp (time_from_start).
    commands: np.ndarray
    command_offsets: np.ndarray
    object_stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (P,) empty: no object poses
    object_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (P, 3) position, the pose's frame


@dataclass
class _Messages:
    """One bag's messages on the configured topics, before the joints are put in one order."""

    image_topic: str
    images: list = field(default_factory=list)
    image_stamps: list = field(default_factory=list)
    joints: list = field(default_factory=list)  # (stamp, names, positions)
    # (stamp, names, offsets, points): names None for Float64MultiArray; JointTrajectory without points included
    commands: list = field(default_factory=list)
    objects: list = field(default_factory=list)
    object_stamps: list = field(default_factory=list)


def _stamp(msg, bag_ns: int, cfg: DataConfig) -> int:
    header = getattr(msg, "header", None)
    if cfg.stamps == "header" and header is not None:
        ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if ns > 0:  # stamp 0 means "now" for commands
            return ns
    return bag_ns


def _pick_image_topic(path, topics: dict, cfg: DataConfig) -> str:
    for name in (cfg.image_topic, cfg.image_topic.rstrip("/") + "/compressed"):
        if name in topics:
            if topics[name] not in (IMAGE, COMPRESSED):
                raise BagError(f"bag {path}: topic {name} has type {topics[name]}, expected {IMAGE} or {COMPRESSED}")
            return name
    raise BagError(f"bag {path}: no image topic {cfg.image_topic} (nor {cfg.image_topic}/compressed); "
                   f"topics in the bag: {sorted(topics)}")


def _require(path, topics: dict, topic: str, types: tuple[str, ...], what: str):
    if topic not in topics:
        raise BagError(f"bag {path}: no {what} topic {topic}; topics in the bag: {sorted(topics)}")
    if topics[topic] not in types:
        raise BagError(f"bag {path}: topic {topic} has type {topics[topic]}, expected {' or '.join(types)}")


def _wanted_topics(path, topics: dict, image_topic: str, cfg: DataConfig) -> list[str]:
    """The topics to read, after checking that the configured ones exist with the right types."""
    _require(path, topics, cfg.joint_state_topic, (JOINT_STATE,), "joint state")
    wanted = [image_topic, cfg.joint_state_topic]
    if cfg.action_type == "command":
        _require(path, topics, cfg.action_topic, (TRAJECTORY, FLOAT_ARRAY), "action")
        if topics[cfg.action_topic] == FLOAT_ARRAY and not cfg.joint_names:
            # The array names no joints: any order guessed from another topic can silently swap joints.
            raise BagError(f"bag {path}: topic {cfg.action_topic} carries {FLOAT_ARRAY} commands, which name no "
                           "joints; set data.joint_names to the controller's `joints` parameter, in its order")
        wanted.append(cfg.action_topic)
    if cfg.object_pose_topic in topics:  # optional: a bag without it loads without object poses
        _require(path, topics, cfg.object_pose_topic, (POSE,), "object pose")
        wanted.append(cfg.object_pose_topic)
    return wanted


def _decode_image(msg, msgtype: str, size: int) -> np.ndarray:
    if msgtype == COMPRESSED:
        rgb = compressed_to_rgb(msg.format, msg.data)
    else:
        rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
    return resize_rgb(rgb, size)


def _trajectory(msg):
    """(joint names, each point's time_from_start in ns, each point's positions) of a JointTrajectory."""
    offsets = [p.time_from_start.sec * 1_000_000_000 + p.time_from_start.nanosec for p in msg.points]
    return tuple(msg.joint_names), offsets, [p.positions for p in msg.points]


def _read_messages(path, reader: AnyReader, wanted: list[str], image_topic: str, cfg: DataConfig) -> _Messages:
    out = _Messages(image_topic)
    current = image_topic
    try:
        for conn, bag_ns, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            current = conn.topic
            msg = reader.deserialize(raw, conn.msgtype)
            ns = _stamp(msg, bag_ns, cfg)
            if conn.topic == image_topic:
                out.images.append(_decode_image(msg, conn.msgtype, cfg.image_size)), out.image_stamps.append(ns)
            elif conn.topic == cfg.joint_state_topic:
                out.joints.append((ns, tuple(msg.name), msg.position))
            elif conn.topic == cfg.object_pose_topic:
                p = msg.pose.position
                out.objects.append([p.x, p.y, p.z]), out.object_stamps.append(ns)
            elif conn.msgtype == TRAJECTORY:
                out.commands.append((ns, *_trajectory(msg)))
            else:  # Float64MultiArray: one value per joint, in the controller's (= data.joint_names) order
                out.commands.append((ns, None, [0], [msg.data]))
    except ImageFormatError as e:
        raise BagError(f"bag {path}: topic {current}: {e}") from e
    except Exception as e:  # truncated or corrupt storage surfaces as many exception types
        raise BagError(f"bag {path}: cannot read topic {current} ({type(e).__name__}: {e})") from e
    return out


def _ordered(names, values, joint_names, path, topic):
    """Values reordered to joint_names; None when the message lacks some of them (another group's message)."""
    index = {n: i for i, n in enumerate(names)}
    if not all(n in index for n in joint_names):
        return None
    if len(values) < len(names):
        raise BagError(f"bag {path}: topic {topic} has {len(values)} positions for joints {list(names)}")
    return [values[index[n]] for n in joint_names]


def _named(msgs) -> str:
    """What a topic held, for an error: its message count, and the joint lists its messages name."""
    if not msgs:
        return "0 messages"
    lists = ", ".join(str(list(n)) for n in dict.fromkeys(m[1] for m in msgs))
    return f"{len(msgs)} messages, naming joints {lists}"


def _joint_order(path, m: _Messages, cfg: DataConfig) -> list[str]:
    """data.joint_names, else the order the commands name (one controller's, whatever the receive order of
    topics), else (action_type delta) the first joint state's."""
    if cfg.joint_names:
        return list(cfg.joint_names)
    if cfg.action_type == "command":
        named = [names for _, names, _, points in m.commands if points]
        if not named:
            held = _named(m.commands) + (", none with trajectory points" if m.commands else "")
            raise BagError(f"bag {path}: no commands on action topic {cfg.action_topic} ({held}); record the "
                           "controller that drives the arm, or set data.action_type: delta")
        return list(named[0])
    if not m.joints:
        raise BagError(f"bag {path}: no joint states on topic {cfg.joint_state_topic} (0 messages)")
    return list(m.joints[0][1])


def _joint_states(path, m: _Messages, names: list[str], cfg: DataConfig):
    """(stamps, positions (M, J)) of the joint states that name every joint in `names`."""
    topic = cfg.joint_state_topic
    rows = [(ns, _ordered(n, q, names, path, topic)) for ns, n, q in m.joints]
    rows = [(ns, q) for ns, q in rows if q is not None]
    if not rows:
        raise BagError(f"bag {path}: no joint states for joints {names} on topic {topic} ({_named(m.joints)}); "
                       "set data.joint_names to joints the bag has")
    return [ns for ns, _ in rows], np.array([q for _, q in rows], float)


def _command_rows(path, m: _Messages, names: list[str], cfg: DataConfig):
    """(stamps, offsets, points) of the commands for `names`; Float64MultiArray values are taken in names' order."""
    topic = cfg.action_topic
    rows = []
    for ns, n, offsets, points in m.commands:
        q = list(points) if n is None else [_ordered(n, p, names, path, topic) for p in points]
        if q and q[0] is not None:
            rows.append((ns, offsets, np.asarray(q, float)))
    if not rows:
        # Otherwise every action would be the held first position: a model of an arm that ignores its commands.
        raise BagError(f"bag {path}: no commands for joints {names} on action topic {topic} "
                       f"({_named(m.commands)}); record the controller that drives these joints, set "
                       "data.joint_names to the joints it commands, or set data.action_type: delta")
    if any(len(p) != len(names) for _, _, q in rows for p in q):
        raise BagError(f"bag {path}: commands on topic {topic} do not have one value per joint {names}")
    return rows


def _padded(rows, n_joints: int):
    """(stamps (K,), points (K, P, J), offsets (K, P)): every command padded with its last point to P points."""
    width = max([len(q) for _, _, q in rows], default=1)
    points = np.zeros((len(rows), width, n_joints))
    offsets = np.zeros((len(rows), width), np.int64)
    for k, (_, o, q) in enumerate(rows):
        points[k] = np.concatenate([q, np.repeat(q[-1:], width - len(q), 0)])
        offsets[k] = np.concatenate([o, np.repeat(o[-1:], width - len(o))])
    return [ns for ns, _, _ in rows], points, offsets


# Commands, joint states and frames of one recording span nearly the same time; stamps that overlap for under
# this share of the shorter span (beyond the slack for start-up and latency) come from different clocks.
MIN_OVERLAP = 0.1
OVERLAP_SLACK_NS = 1_000_000_000


def _check_same_clock(path, frame_stamps, stamps, what: str, cfg: DataConfig):
    """Refuse a stream stamped on another clock than the frames (a camera's own, sim time): interpolation would
    hold its first or last value for every frame, a constant action or joint state."""
    f0, f1, s0, s1 = frame_stamps[0], frame_stamps[-1], stamps[0], stamps[-1]
    overlap = min(f1, s1) - max(f0, s0)
    if overlap >= MIN_OVERLAP * min(f1 - f0, s1 - s0) - OVERLAP_SLACK_NS:
        return
    where = f"camera frames are stamped {f0 / 1e9:.3f} s to {f1 / 1e9:.3f} s, {what} {s0 / 1e9:.3f} s to {s1 / 1e9:.3f} s"
    if cfg.stamps == "receive":  # one recorder's clock: one of them was recorded only for a moment
        raise BagError(f"bag {path}: {where}: they hardly overlap; record both for the whole episode")
    raise BagError(f"bag {path}: {where}: they hardly overlap, so their header stamps come from different clocks; "
                   "set data.stamps: receive to use the recorder's receive times")


def read_bag(path, cfg: DataConfig) -> BagStreams:
    """Decode the camera, joint state and command topics of one bag (images resized to cfg.image_size)."""
    path = Path(path)
    reader = open_reader(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        image_topic = _pick_image_topic(path, topics, cfg)
        m = _read_messages(path, reader, _wanted_topics(path, topics, image_topic, cfg), image_topic, cfg)
    finally:
        reader.close()
    return _streams(path, m, cfg)


def _streams(path, m: _Messages, cfg: DataConfig) -> BagStreams:
    if not m.images:
        raise BagError(f"bag {path}: no frames on image topic {m.image_topic}")
    names = _joint_order(path, m, cfg)
    image_stamps, images = _sorted(m.image_stamps, np.stack(m.images))
    joint_stamps, joint_pos = _sorted(*_joint_states(path, m, names, cfg))
    _check_same_clock(path, image_stamps, joint_stamps, f"joint states on {cfg.joint_state_topic}", cfg)
    rows = _command_rows(path, m, names, cfg) if cfg.action_type == "command" else []
    command_stamps, commands, offsets = _sorted(*_padded(rows, len(names)))
    if cfg.action_type == "command":
        _check_same_clock(path, image_stamps, command_stamps, f"commands on {cfg.action_topic}", cfg)
    return BagStreams(image_stamps, images, names, joint_stamps, joint_pos, command_stamps, commands, offsets,
                      *_sorted(m.object_stamps, np.array(m.objects, float).reshape(len(m.objects), 3)))


def open_reader(path) -> AnyReader:
    """An opened AnyReader over one rosbag2 directory, with failures as BagError."""
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"bag {path}: no metadata.yaml (not a rosbag2 directory, or an interrupted recording; "
                       "`ros2 bag reindex` rebuilds it)")
    reader = AnyReader([path], default_typestore=TYPESTORE)
    try:
        reader.open()
    except Exception as e:  # rosbags raises several types for unreadable storage
        raise BagError(f"bag {path}: cannot open ({type(e).__name__}: {e})") from e
    return reader


def _sorted(stamps, *values):
    """The stamps (int64) in increasing order, and each of `values` in the same order."""
    stamps = np.asarray(stamps, np.int64)
    order = np.argsort(stamps, kind="stable")
    return (stamps[order], *(v[order] for v in values))
