"""Shared plumbing for the jepa_wm nodes: parameters, QoS, the stamped-latent message, start-up.

Not a node. Everything here is small and ROS-facing; the learning code stays in
jepa_wm.core / jepa_wm.sim / jepa_wm.data, which never import rclpy.

Stamped latent message
----------------------
Latents (and the monitor's score) travel as ``sensor_msgs/msg/Image`` with
``encoding="32FC1"``, ``height=1``, ``width=D``:

* it has a ``std_msgs/Header``, so the camera frame's ``header.stamp`` (and
  frame_id) travels unchanged with the latent computed from it, which is what
  the monitor matches predictions and observations on;
* the payload is typed and self-describing (encoding, width, step,
  is_bigendian), little-endian float32, no per-element names (JointState with
  names "z0".."zD-1" would ship D strings per message) and no stamp smuggled
  into a MultiArray layout label;
* it is a standard message every ROS tool already records (rosbag2/MCAP),
  echoes and plots, and no custom interface package is needed (an
  ament_python package cannot generate .msg types; a separate ament_cmake
  interfaces package would be one more thing to build on every robot).
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image

# Camera subscriptions: best effort, keep last 5 (matches reliable and best-effort publishers).
SENSOR_QOS = qos_profile_sensor_data
# Latched topics (stop latch, gate state): late joiners get the last value.
LATCHED_QOS = QoSProfile(
    depth=1,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

DEFAULT_STOP_TOPIC = "/jepa_wm/stop"
EXIT_BAD_PARAMETER = 2


class ParameterError(ValueError):
    """A parameter is missing or invalid; the message names it and says what to set."""


_KINDS = {
    "bool": (ParameterType.PARAMETER_BOOL, Parameter.Type.BOOL, "a bool"),
    "int": (ParameterType.PARAMETER_INTEGER, Parameter.Type.INTEGER, "an integer"),
    "float": (ParameterType.PARAMETER_DOUBLE, Parameter.Type.DOUBLE, "a float"),
    "str": (ParameterType.PARAMETER_STRING, Parameter.Type.STRING, "a string"),
    "str[]": (ParameterType.PARAMETER_STRING_ARRAY, Parameter.Type.STRING_ARRAY, "a list of strings"),
    "float[]": (ParameterType.PARAMETER_DOUBLE_ARRAY, Parameter.Type.DOUBLE_ARRAY, "a list of floats"),
}
_INFER = {bool: "bool", int: "int", float: "float", str: "str"}


def declare(node, name: str, default, description: str, kind: str | None = None, read_only: bool = True):
    """Declare a read-only parameter with its description; returns its value.

    `default=None` makes it required: without an override, ParameterError
    names it. `kind` ("bool", "int", "float", "str", "str[]", "float[]") is
    inferred from the default when not given.
    """
    kind = kind or ("str" if default is None else _INFER[type(default)])
    ptype, rtype, what = _KINDS[kind]
    # Floats accept integers too ("timeout: 1"), and an empty list default would be typed as a
    # byte array: these are typed dynamically and checked below.
    lenient = kind in ("float", "float[]", "str[]") and default is not None
    desc = ParameterDescriptor(name=name, type=ParameterType.PARAMETER_NOT_SET if lenient else ptype,
                               description=description, read_only=read_only, dynamic_typing=lenient)
    value = rtype if default is None else (list(default) if kind.endswith("[]") else default)
    try:
        node.declare_parameter(name, value, desc)
    except Exception as e:  # a YAML value of the wrong type
        raise ParameterError(f"parameter '{name}' must be {what} ({type(e).__name__}: {e})") from None
    try:
        got = node.get_parameter(name).value
    except ParameterUninitializedException:
        # "[]" (params file or -p) arrives untyped and leaves a required list uninitialized: set, but empty.
        if name not in getattr(node, "_parameter_overrides", {}):
            raise ParameterError(f"parameter '{name}' is required and was not set ({description})") from None
        got = None
    if got is None:  # an untyped "[]": the user's empty list, not the default
        if not kind.endswith("[]"):
            raise ParameterError(f"parameter '{name}' must be {what}, got []")
        got = []
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if kind == "float":
        if not number(got):
            raise ParameterError(f"parameter '{name}' must be {what}, got {got!r}")
        got = float(got)
    elif kind == "float[]":
        if not isinstance(got, (list, tuple)) and not hasattr(got, "tolist") or not all(number(v) for v in list(got)):
            raise ParameterError(f"parameter '{name}' must be {what}, got {got!r}")
        got = [float(v) for v in got]
    elif kind == "str[]":
        if isinstance(got, str) or not all(isinstance(v, str) for v in list(got)):
            raise ParameterError(f"parameter '{name}' must be {what}, got {got!r}")
    if kind.endswith("[]"):
        got = list(got)
    return got


# Declared by rclpy itself (or by some ROS distros only): never a typo of ours.
_BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


def check_overrides(node):
    """Refuse parameter overrides (params file, `-p`, launch) that name no parameter `node` declared.

    rclpy keeps an override for an undeclared name without a word, so `-p autonomy_timout:=5.0` would leave
    autonomy_timeout at its default. Call once the node has declared all of its parameters, before it creates
    anything or says it is up: a node refused here must not have published (subscribers keep a latched message).
    """
    import difflib

    declared = set(node.list_parameters([], 0).names)
    unknown = sorted(n for n in getattr(node, "_parameter_overrides", {})
                     if n not in declared and n not in _BUILTIN_PARAMETERS and not n.startswith("qos_overrides."))
    if not unknown:
        return
    names = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(declared - _BUILTIN_PARAMETERS), n=1)
        names.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    many = len(unknown) > 1
    raise ParameterError(f"{'parameters' if many else 'parameter'} {', '.join(names)} "
                         f"{'are not parameters' if many else 'is not a parameter'} of {node.get_name()}: fix or "
                         f"remove {'them' if many else 'it'} (config/*.yaml lists every parameter of each node)")


def require(cond: bool, name: str, problem: str):
    """Raise ParameterError('parameter NAME ...') unless `cond`."""
    if not cond:
        raise ParameterError(f"parameter '{name}' {problem}")


def check_limits(names, lower, upper):
    """Optional per-joint position limits: both empty, or one value per joint with lower < upper."""
    if not lower and not upper:
        return None, None
    require(len(lower) == len(names), "joint_lower_limits", f"has {len(lower)} values for {len(names)} joints {list(names)}")
    require(len(upper) == len(names), "joint_upper_limits", f"has {len(upper)} values for {len(names)} joints {list(names)}")
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    require(bool(np.all(lo < hi)), "joint_lower_limits", "must be below joint_upper_limits for every joint")
    return lo, hi


IMAGE_TRANSPORTS = ("raw", "compressed")


def subscribe_camera(node, topic: str, transport: str, on_image, on_compressed):
    """One camera subscription, named as image_transport names them: Image on `topic`, or CompressedImage on
    `topic`/compressed. One, not both: a driver compresses only while someone listens, and a node on both
    would decode every frame twice."""
    if transport == "compressed":
        return node.create_subscription(CompressedImage, topic.rstrip("/") + "/compressed", on_compressed, SENSOR_QOS)
    return node.create_subscription(Image, topic, on_image, SENSOR_QOS)


def check_model_step(name: str, value: float, meta: dict, model: str):
    """A model predicts steps as far apart as the frames it was trained on: `name` (seconds) must match it."""
    step = (meta or {}).get("step_s")
    if step is not None:
        require(abs(value - step) <= 0.1 * step, name,
                f"is {value} s but checkpoint {model} predicts steps of {step:.3g} s (the spacing of its training "
                f"frames): set {name} to {step:.3g}")


def resolve_model(path: str) -> str:
    """A checkpoint path as given, or, when relative and absent here, under the package's share dir."""
    from pathlib import Path

    if Path(path).is_absolute() or Path(path).exists():
        return path
    try:
        from jepa_wm.resources import share_dir

        candidate = share_dir() / path
        return str(candidate) if candidate.exists() else path
    except (ImportError, FileNotFoundError):
        return path


def destroy(node, entity):
    """Destroy a publisher, subscription, service or timer that `node` created."""
    for kind, fn in ((Publisher, node.destroy_publisher), (Subscription, node.destroy_subscription),
                     (Service, node.destroy_service), (Timer, node.destroy_timer)):
        if isinstance(entity, kind):
            fn(entity)
            return
    raise TypeError(f"cannot destroy a {type(entity).__name__}")


# ----------------------------------------------------------------------------- time


def stamp_ns(stamp) -> int:
    """A builtin_interfaces Time or Duration in integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_msg(ns: int):
    """Integer nanoseconds -> builtin_interfaces Time (nanosec always in [0, 1e9))."""
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds(d: float) -> Duration:
    return Duration(nanoseconds=int(d * 1e9))


# ----------------------------------------------------------------------------- stamped float vectors


def vector_msg(values, header=None, stamp=None, frame_id: str = "") -> Image:
    """A stamped float32 vector as Image(encoding=32FC1, height=1, width=len)."""
    v = np.ascontiguousarray(np.asarray(values, dtype="<f4").ravel())
    msg = Image()
    if header is not None:
        msg.header = header
    else:
        if stamp is not None:
            msg.header.stamp = stamp
        msg.header.frame_id = frame_id
    msg.height, msg.width = 1, int(v.size)
    msg.encoding, msg.is_bigendian, msg.step = "32FC1", 0, 4 * int(v.size)
    msg.data = v.tobytes()
    return msg


def vector_from_msg(msg: Image) -> np.ndarray:
    """Inverse of vector_msg; raises ValueError naming what is wrong."""
    if msg.encoding != "32FC1":
        raise ValueError(f"latent message encoding is {msg.encoding!r}, expected '32FC1'")
    n = int(msg.height) * int(msg.width)
    if msg.step != 4 * msg.width or len(msg.data) != 4 * n:
        raise ValueError(f"latent message has {len(msg.data)} bytes for {msg.height}x{msg.width} float32 (step {msg.step})")
    dtype = ">f4" if msg.is_bigendian else "<f4"
    return np.frombuffer(bytes(msg.data), dtype=dtype).astype(np.float32)


# ----------------------------------------------------------------------------- start-up


def main_for(node_factory, args=None, after_create=None) -> int:
    """Run one node: init, build (refusing bad or undeclared parameters with exit 2), spin, shut down cleanly.

    A ParameterError from `node_factory` or `after_create` is logged here, once, as `refusing to start: ...`."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        try:
            node = node_factory()
            if after_create is not None:
                after_create(node)
        except ParameterError as e:
            msg = f"refusing to start: {e}"
            if node is not None:
                node.get_logger().fatal(msg)
            else:
                print(f"[FATAL] {msg}", file=sys.stderr, flush=True)
            return EXIT_BAD_PARAMETER
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if node is not None:
            try:
                node.destroy_node()
            except Exception:
                pass
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


# ----------------------------------------------------------------------------- camera frames


def rgb_from_image(msg) -> np.ndarray:
    """sensor_msgs/Image (any cv_bridge encoding, padded steps) -> uint8 (H, W, 3); ImageFormatError (ValueError)."""
    from jepa_wm.data.images import image_to_rgb

    return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data), msg.is_bigendian)


def rgb_from_compressed(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (png/jpeg) -> uint8 (H, W, 3); ValueError naming the problem."""
    from jepa_wm.data.images import compressed_to_rgb

    return compressed_to_rgb(msg.format, bytes(msg.data))


def image_msg_from_rgb(rgb, stamp=None, frame_id: str = "") -> Image:
    """uint8 (H, W, 3) -> sensor_msgs/Image rgb8."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, 3 * int(rgb.shape[1])
    msg.data = rgb.tobytes()
    return msg


class Encoder:
    """A checkpoint's encoder for one process: uint8 RGB frame -> latent (numpy float32)."""

    def __init__(self, model):
        import torch

        from jepa_wm.core.model import preprocess

        self.model, self._torch, self._preprocess = model, torch, preprocess
        self.size = model.cfg.image_size

    def __call__(self, rgb) -> np.ndarray:
        if not getattr(rgb, "flags", None) or not rgb.flags.writeable:
            rgb = np.array(rgb, dtype=np.uint8)  # torch warns on read-only buffers
        with self._torch.inference_mode():
            return self.model.encode(self._preprocess(rgb, self.size))[0].float().numpy()
