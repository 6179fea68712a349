"""Simulator node: the embedded MuJoCo arm behind the topics a real arm offers.

Every `control_dt` (a timer) it steps the simulator towards the current
command and publishes the camera Image + CameraInfo (the scene camera's
intrinsics), /joint_states and the object's pose (PoseStamped in the world
frame, the ground truth a motion-capture system would give on a real arm);
with `publish_clock` it also drives /clock (nodes then run with use_sim_time).

Commands, like ros2_control's controllers:
* `<controller_name>/joint_trajectory` (JointTrajectory): waypoint i is the
  target of the (i+1)-th control tick after receipt (points are matched by
  time_from_start against ticks x control_dt); an empty trajectory holds the
  current position; joint names may come in any order;
* `<controller_name>/commands` (Float64MultiArray): absolute joint targets,
  held until the next command (forward_command_controller semantics).

Perturbation services for tests and demos: `~/teleport_object` (Trigger: the
object jumps to `teleport_xy`, or by `teleport_distance` in a seeded random
direction that keeps it on the table when unset), `~/block_joint` (SetBool:
block/unblock joint `perturb_joint`), `~/freeze_camera` and `~/occlude_camera`
(SetBool), and `~/reset` (Trigger: back to the initial state). Their
parameters are dynamic, and checked at start-up and on every set: a
`teleport_xy` off the table (the static surface the object starts on), a
`teleport_distance` that is not > 0 or a `perturb_joint` that is no joint index
is refused with the reason.
"""

from __future__ import annotations

import math

import numpy as np
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock as RosClock
from rclpy.clock import ClockType
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from jepa_wm.nodes.common import (
    RELIABLE_QOS,
    SENSOR_QOS,
    ParameterError,
    check_overrides,
    declare,
    image_msg_from_rgb,
    main_for,
    require,
    stamp_msg,
    stamp_ns,
)

PERTURBATION_PARAMETERS = ("teleport_xy", "teleport_distance", "perturb_joint")


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__("sim", **kwargs)
        p = self._params()
        self._build(p)
        for name in PERTURBATION_PARAMETERS:  # these need the scene: the table, the joints
            problem = self._perturbation_problem(name, p[name])
            require(not problem, name, problem)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.target = self.sim.joint_state()[0].copy()
        self.trajectory = None  # (positions (N, J), times (N,) seconds, ticks since receipt)
        self.steps = 0
        self.time_offset = 0.0  # s of simulated time before the last /sim/reset
        self.rng = np.random.default_rng(p["seed"] + 1)
        cam = p["camera_topic"]
        self.image_pub = self.create_publisher(Image, cam, SENSOR_QOS if p["camera_best_effort"] else RELIABLE_QOS)
        self.info_pub = self.create_publisher(CameraInfo, cam.rsplit("/", 1)[0] + "/camera_info"
                                              if "/" in cam.strip("/") else "camera_info", RELIABLE_QOS)
        self.js_pub = self.create_publisher(JointState, p["joint_states_topic"], RELIABLE_QOS)
        self.object_pub = None
        if p["object_pose_topic"] and self.sim.has_object:
            self.object_pub = self.create_publisher(PoseStamped, p["object_pose_topic"], RELIABLE_QOS)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if p["publish_clock"] else None
        ctrl = p["controller_name"]
        self.create_subscription(JointTrajectory, f"{ctrl}/joint_trajectory", self._on_trajectory, RELIABLE_QOS)
        self.create_subscription(Float64MultiArray, f"{ctrl}/commands", self._on_commands, RELIABLE_QOS)
        self.create_service(Trigger, "~/teleport_object", self._on_teleport)
        self.create_service(SetBool, "~/block_joint", self._on_block)
        self.create_service(SetBool, "~/freeze_camera", lambda rq, rs: self._toggle("freeze_camera", rq, rs))
        self.create_service(SetBool, "~/occlude_camera", lambda rq, rs: self._toggle("occlude_camera", rq, rs))
        self.create_service(Trigger, "~/reset", self._on_reset)
        # A wall-clock (steady) timer: under use_sim_time the node's own clock is the /clock this timer drives, and
        # a timer on it would wait for ever.
        self.create_timer(p["control_dt"], self._tick, clock=RosClock(clock_type=ClockType.STEADY_TIME))
        self._publish(self.obs)
        self.get_logger().info(
            f"sim up: joints {self.joint_names}, camera '{cam}' {p['width']}x{p['height']} every {p['control_dt']} s, "
            f"commands on {ctrl}/joint_trajectory and {ctrl}/commands"
        )

    def _params(self) -> dict:
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        p = {
            "scene": d("scene", "builtin", "'builtin' or a MuJoCo XML file"),
            "camera": d("camera", "overhead", "camera name in the scene"),
            "object_body": d("object_body", "", "object body name ('' = the scene's default)"),
            "joint_names": d("joint_names", [], "joints to expose ([] = all of the scene's arm joints)", kind="str[]"),
            "ee_site": d("ee_site", "", "end-effector site ('' = site 'ee' if the scene has one, else the last arm joint's body)"),
            "width": d("width", 64, "camera width (px)"),
            "height": d("height", 64, "camera height (px)"),
            "control_dt": d("control_dt", 0.1, "seconds per control step (timer period and simulated time per step)"),
            "seed": d("seed", 0, "simulator seed"),
            "initial_joint_positions": d("initial_joint_positions", [], "start configuration ([] = the seed's)", kind="float[]"),
            "object_xy": d("object_xy", [], "start object position ([] = the seed's)", kind="float[]"),
            "camera_topic": d("camera_topic", "/camera/image_raw", "Image topic (CameraInfo on the sibling camera_info)"),
            "camera_frame_id": d("camera_frame_id", "camera", "frame_id of the camera messages"),
            "camera_best_effort": d("camera_best_effort", True, "publish the camera best effort (like most camera drivers)"),
            "image_encoding": d("image_encoding", "rgb8", "'rgb8' or 'bgr8'"),
            "joint_states_topic": d("joint_states_topic", "/joint_states", "JointState output"),
            "object_pose_topic": d("object_pose_topic", "/object_pose", "PoseStamped of the object, world frame ('' = off)"),
            "controller_name": d("controller_name", "/arm_controller", "controller namespace for command inputs"),
            "publish_clock": d("publish_clock", False, "publish /clock with the simulated time"),
            "teleport_xy": d("teleport_xy", [], "where ~/teleport_object puts the object ([] = random jump)", kind="float[]", read_only=False),
            "teleport_distance": d("teleport_distance", 0.15, "random jump length for ~/teleport_object", read_only=False),
            "perturb_joint": d("perturb_joint", 0, "joint index ~/block_joint acts on", read_only=False),
        }
        require(p["control_dt"] > 0 and math.isfinite(p["control_dt"]), "control_dt", "must be a positive number of seconds")
        for side in ("width", "height"):
            require(p[side] >= 8, side, f"is {p[side]}; it must be >= 8 pixels")
        require(p["image_encoding"] in ("rgb8", "bgr8"), "image_encoding", f"is {p['image_encoding']!r}; set 'rgb8' or 'bgr8'")
        require(len(p["object_xy"]) in (0, 2), "object_xy", "must be [] or [x, y]")
        check_overrides(self)  # before the scene is loaded
        self.p = p
        return p

    def _build(self, p):
        from jepa_wm.sim.arm import ArmSim, SimConfig

        kw = dict(scene=p["scene"], camera=p["camera"], joint_names=list(p["joint_names"]), object_body=p["object_body"],
                  width=p["width"], height=p["height"], control_dt=p["control_dt"], seed=p["seed"], ee_site=p["ee_site"])
        try:
            self.sim = ArmSim(SimConfig(**kw))
        except (ValueError, OSError, KeyError) as e:
            # The simulator names the SimConfig field it refuses, which is this node's parameter of that name; a file
            # it cannot read is the scene's.
            setting = getattr(e, "setting", "scene")
            setting = setting if setting in p else "scene"  # a SimConfig field this node does not expose
            raise ParameterError(f"parameter '{setting}' is {p[setting]!r}: {e}") from None
        self.joint_names = list(self.sim.joint_names)
        init = p["initial_joint_positions"]
        require(len(init) in (0, len(self.joint_names)), "initial_joint_positions",
                f"has {len(init)} values for joints {self.joint_names}")
        self.obs = self.sim.reset(seed=p["seed"], joint_pos=np.asarray(init) if init else None,
                                  object_xy=np.asarray(p["object_xy"]) if p["object_xy"] else None)
        self.initial = (np.asarray(self.obs.joint_pos).copy(), np.asarray(self.obs.object_xy).copy())
        k = self.sim.camera_matrix()  # fixed by the scene: CameraInfo's K, P and R, once
        self.intrinsics = (k.reshape(-1).tolist(), np.hstack([k, np.zeros((3, 1))]).reshape(-1).tolist(),
                           np.eye(3).reshape(-1).tolist())
        limits = np.asarray(self.sim.joint_limits, dtype=float)
        self.lo, self.hi = limits[:, 0], limits[:, 1]

    # ------------------------------------------------------------------ commands

    def _reorder(self, names, values):
        idx = [list(names).index(j) for j in self.joint_names]
        return np.asarray([values[i] for i in idx], dtype=float)

    def _on_trajectory(self, msg: JointTrajectory):
        if not msg.points:
            self.trajectory = None
            self.target = self.sim.joint_state()[0].copy()
            return
        try:
            pos = np.stack([self._reorder(msg.joint_names, pt.positions) for pt in msg.points])
        except (ValueError, IndexError):
            self.get_logger().warning(f"trajectory joints {list(msg.joint_names)} do not cover {self.joint_names}", throttle_duration_sec=2.0)
            return
        times = np.asarray([stamp_ns(pt.time_from_start) * 1e-9 for pt in msg.points])
        if not np.all(np.isfinite(pos)) or np.any(np.diff(times) <= 0):
            self.get_logger().warning("dropping trajectory: non-finite positions or time_from_start not increasing", throttle_duration_sec=2.0)
            return
        self.trajectory = [pos, times, 0]

    def _on_commands(self, msg: Float64MultiArray):
        data = np.asarray(msg.data, dtype=float)
        if data.size != len(self.joint_names) or not np.all(np.isfinite(data)):
            self.get_logger().warning(f"dropping command: need {len(self.joint_names)} finite values", throttle_duration_sec=2.0)
            return
        self.trajectory, self.target = None, data

    def _next_target(self):
        if self.trajectory is not None:
            pos, times, ticks = self.trajectory
            ticks += 1
            self.trajectory[2] = ticks
            elapsed = ticks * self.p["control_dt"]
            later = np.nonzero(times >= elapsed - 0.5 * self.p["control_dt"])[0]
            self.target = pos[later[0]] if later.size else pos[-1]
        return np.clip(self.target, self.lo, self.hi)

    # ------------------------------------------------------------------ stepping

    def _tick(self):
        self.obs = self.sim.step(self._next_target())
        self.steps += 1
        self._publish(self.obs)

    def _stamp(self):
        if self.clock_pub is not None:
            # Whole nanoseconds first: rounding the fraction alone could wrap it to 0 without carrying a second.
            stamp = stamp_msg(round((self.time_offset + float(self.sim.time)) * 1e9))
            self.clock_pub.publish(Clock(clock=stamp))
            return stamp
        return self.get_clock().now().to_msg()

    def _publish(self, obs):
        try:
            self._send(obs)
        except _rclpy.RCLError:
            if self.context.ok():
                raise
            # SIGTERM or Ctrl-C shut the context down while this tick ran: nothing is left to publish to, and the
            # node is about to exit cleanly.

    def _send(self, obs):
        stamp = self._stamp()
        rgb = np.asarray(obs.image, dtype=np.uint8)
        img = image_msg_from_rgb(rgb if self.p["image_encoding"] == "rgb8" else rgb[..., ::-1], stamp, self.p["camera_frame_id"])
        img.encoding = self.p["image_encoding"]
        self.image_pub.publish(img)
        info = CameraInfo(height=img.height, width=img.width, distortion_model="plumb_bob")
        info.header = img.header
        info.k, info.p, info.r = self.intrinsics
        info.d = [0.0] * 5
        self.info_pub.publish(info)
        js = JointState(name=self.joint_names, position=np.asarray(obs.joint_pos, dtype=float).tolist(),
                        velocity=np.asarray(obs.joint_vel, dtype=float).tolist())
        js.header.stamp = stamp
        self.js_pub.publish(js)
        if self.object_pub is not None:
            (x, y, z), (qw, qx, qy, qz) = self.sim.object_pose()
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, "world"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = float(x), float(y), float(z)
            o = pose.pose.orientation
            o.w, o.x, o.y, o.z = float(qw), float(qx), float(qy), float(qz)
            self.object_pub.publish(pose)

    # ------------------------------------------------------------------ perturbations

    def _perturbation_problem(self, name: str, value) -> str:
        """Why `value` cannot be perturbation parameter `name` ("" if it can), at start-up and on every set."""
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        if name == "teleport_xy":
            xy = list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
            if xy in (None, []):  # a random jump; "[]" arrives untyped
                return ""
            if not (isinstance(xy, list) and len(xy) == 2 and all(number(v) for v in xy)):
                return f"is {value!r}; it must be [] (a random jump) or [x, y] in metres"
            problem = self.sim.table_problem(xy)
            return problem and f"is {[float(v) for v in xy]}, {problem}: choose a point on the table"
        if name == "teleport_distance":
            return "" if number(value) and value > 0 else f"is {value!r}; it must be a jump length > 0 m"
        n = len(self.joint_names)
        return "" if 0 <= value < n else f"is {value}; it must be a joint index 0..{n - 1} of {self.joint_names}"

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name in PERTURBATION_PARAMETERS:
                problem = self._perturbation_problem(param.name, param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=f"parameter '{param.name}' {problem}")
        return SetParametersResult(successful=True)

    def _on_teleport(self, req, res):
        xy = list(self.get_parameter("teleport_xy").value or [])  # "[]" in a params file arrives untyped
        if xy:
            new = np.asarray(xy, dtype=float)  # on the table: checked when it was set
        else:
            distance = self.get_parameter("teleport_distance").value
            new = self.sim.random_jump(distance, self.rng)
            if new is None:
                res.success = False
                res.message = (f"no direction keeps a {distance} m jump from {np.round(self.sim.object_xy(), 3).tolist()} "
                               f"on the table: lower teleport_distance, or set teleport_xy")
                return res
        try:
            self.sim.teleport_object(new)
        except ValueError as e:
            res.success, res.message = False, str(e)
            return res
        res.success, res.message = True, f"object teleported to {np.round(new, 3).tolist()}"
        self.get_logger().warning(f"perturbation: {res.message}")
        return res

    def _on_block(self, req, res):
        i = int(self.get_parameter("perturb_joint").value)  # a joint index: checked when it was set
        try:
            self.sim.block_joint(i, bool(req.data))
        except ValueError as e:
            res.success, res.message = False, str(e)
            return res
        res.success, res.message = True, f"joint {self.joint_names[i]} {'blocked' if req.data else 'released'}"
        self.get_logger().warning(f"perturbation: {res.message}")
        return res

    def _toggle(self, what, req, res):
        getattr(self.sim, what)(bool(req.data))
        res.success, res.message = True, f"{what} {'on' if req.data else 'off'}"
        self.get_logger().warning(f"perturbation: {res.message}")
        return res

    def _on_reset(self, req, res):
        for i in range(len(self.joint_names)):
            self.sim.block_joint(i, False)
        self.sim.freeze_camera(False)
        self.sim.occlude_camera(False)
        # MuJoCo's reset starts its time at 0 again; /clock and every stamp go on from where they were instead.
        self.time_offset += float(self.sim.time) + self.p["control_dt"]
        self.obs = self.sim.reset(joint_pos=self.initial[0], object_xy=self.initial[1])
        self.trajectory, self.target = None, np.asarray(self.obs.joint_pos, dtype=float).copy()
        self._publish(self.obs)
        res.success, res.message = True, "simulator reset to its initial state"
        return res


def main(args=None) -> int:
    return main_for(SimNode, args)
