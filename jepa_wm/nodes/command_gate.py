"""Command gate: the only publisher to the arm's controller.

Inputs, twist_mux style: `teleop` and `autonomy`, each on
`<input>/joint_trajectory` (JointTrajectory) and `<input>/commands`
(Float64MultiArray, one position per joint in `joint_names` order), each with a
priority and a timeout. The freshest highest-priority input wins; any teleop
message pre-empts autonomy (and, by default, disengages it: autonomy needs an
explicit re-engage after a human took over). Autonomy is forwarded only while
engaged (`~/engage`, std_srvs/SetBool), no protective stop is latched on the
stop topic, and (by default) the monitor is alive: the stop topic has a
publisher and a message on it arrived within `monitor_timeout` (the monitor
republishes its stop state at 20 Hz, so a killed or hung monitor falls silent).
An autonomy JointTrajectory whose header.stamp (the camera frame it was planned
from) is more than `autonomy_max_age` away from the gate's clock is dropped:
a slow planner leads to a hold, never to stale motion. Float64MultiArray has
no header; that input is judged by receipt time only. An engaged gate holds
while autonomy is silent and resumes when it is back, but autonomy silent for
`autonomy_disengage_timeout` (a dead planner, not a slow plan) disengages it: a
planner started later must not move the arm without the operator's engage.

Joint states with a non-finite position for any of the gate's joints do not
count as a measurement. A receipt time in the future of the gate's clock (the
clock jumped back: a restarted simulator's /clock, an NTP step) is stale: the gate
forgets what it received before the jump and, if engaged, disengages.

Autonomy may lead the measured joints only so far (`autonomy_max_speed`); when
every autonomy command has been bounded for `autonomy_blocked_timeout`, the arm
is not following (a jammed joint, an obstacle) and autonomy is disengaged. A
joint that stops while autonomy moves its command on (`stuck_joint_*`,
core.checks.StuckJointCheck) disengages it within two control steps.

Whenever output stops being forwarded (stop, disengage, the active input goes
stale, the monitor disappears or falls silent, the joint states go stale) the
gate publishes one HOLD at the measured joint position captured at that moment;
without fresh joint states, an empty trajectory (on which
joint_trajectory_controller holds where it is), and the HOLD at the measured
position follows as soon as joint states arrive. It never replays a stale
command. Output always has a zero header.stamp: joint_trajectory_controller
then starts it on receipt, on its own clock.
Commands received before an engage, or older than the input timeout, are
dropped. `~/state` (std_msgs/String, JSON, latched) tells the planner and the
monitor what the gate is doing, so engaging is bumpless: the planner restarts
from the measured state when it sees `"engaged"` turn true. It is published
whenever its mode, engaged, stopped or reason changes, once the mode has been
recomputed, and its reason is the one /diagnostics gives.
"""

from __future__ import annotations

import json
import math

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from jepa_wm.core.checks import StuckJointCheck
from jepa_wm.nodes.common import (
    DEFAULT_STOP_TOPIC,
    LATCHED_QOS,
    RELIABLE_QOS,
    check_limits,
    check_overrides,
    declare,
    main_for,
    require,
    seconds,
    stamp_ns,
)

CONTROLLER_TYPES = ("joint_trajectory", "forward_command")


def fresh(last_ns: int | None, timeout: float, now_ns: int) -> bool:
    """Received within `timeout` s. A receipt time in the future means the clock jumped back (a restarted
    simulator's /clock, an NTP step): stale, or every watchdog would count it fresh until the clock caught up."""
    return last_ns is not None and 0 <= now_ns - last_ns <= timeout * 1e9


class Input:
    """One command source: priority, timeout and its last accepted command (positions per joint)."""

    def __init__(self, name: str, priority: int, timeout: float):
        self.name, self.priority, self.timeout = name, priority, timeout
        self.last_ns: int | None = None  # receipt time of the last accepted command
        self.trajectory: JointTrajectory | None = None  # reordered to joint_names
        self.count = 0

    def fresh(self, now_ns: int) -> bool:
        return fresh(self.last_ns, self.timeout, now_ns)

    def clear(self):
        self.last_ns, self.trajectory = None, None


class CommandGate(Node):
    def __init__(self, **kwargs):
        super().__init__("command_gate", **kwargs)
        p = self._params()
        self.joint_names = p["joint_names"]
        self.inputs = {
            "teleop": Input("teleop", p["teleop_priority"], p["teleop_timeout"]),
            "autonomy": Input("autonomy", p["autonomy_priority"], p["autonomy_timeout"]),
        }
        self.engaged = False
        self.engaged_ns = 0
        self.stopped = False
        self.measured: np.ndarray | None = None
        self.measured_ns: int | None = None
        # (receipt time, why) of the last joint states that were no measurement: engaging names the problem.
        self.joint_states_rejected: tuple[int, str] | None = None
        self.monitor_ns: int | None = None  # receipt time of the last message on the stop topic
        self.mode = "hold"  # hold | teleop | autonomy | stopped
        # Why the gate is in its mode: set by _update, and by the events that leave it in a disengaged hold,
        # which reports the event until something else happens. ~/state and /diagnostics both read it.
        self.reason = "starting: autonomy disengaged"
        self.published: tuple | None = None  # (mode, engaged, stopped, reason) last published on ~/state
        self.hold_position: list | None = None
        self.hold_pending = False  # a hold was due while the arm's position was unknown
        self.forwarded = 0
        self.limited = 0  # autonomy points bounded by autonomy_max_speed
        self.limited_since: int | None = None  # first of an unbroken run of bounded autonomy commands
        self.stuck = (StuckJointCheck(p["stuck_joint_lead"], p["stuck_joint_still"], p["stuck_joint_steps"])
                      if p["stuck_joint_lead"] > 0 else None)
        self.stuck_measured_ns: int | None = None  # the joint states the stuck-joint check last saw

        if p["controller_type"] == "joint_trajectory":
            self.out_topic = f"{p['controller_name']}/joint_trajectory"
            self.out = self.create_publisher(JointTrajectory, self.out_topic, RELIABLE_QOS)
        else:
            self.out_topic = f"{p['controller_name']}/commands"
            self.out = self.create_publisher(Float64MultiArray, self.out_topic, RELIABLE_QOS)
        for name, topic in (("teleop", p["teleop_topic"]), ("autonomy", p["autonomy_topic"])):
            self.create_subscription(JointTrajectory, f"{topic}/joint_trajectory",
                                     lambda m, n=name: self._on_trajectory(n, m), RELIABLE_QOS)
            self.create_subscription(Float64MultiArray, f"{topic}/commands",
                                     lambda m, n=name: self._on_array(n, m), RELIABLE_QOS)
        self.create_subscription(Bool, p["stop_topic"], self._on_stop, LATCHED_QOS)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_states, RELIABLE_QOS)
        self.state_pub = self.create_publisher(String, "~/state", LATCHED_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_service(SetBool, "~/engage", self._on_engage)
        self.create_timer(1.0 / p["rate"], self._tick)
        self.create_timer(1.0, self._diagnostics)
        self._publish_state()
        self.get_logger().info(
            f"gate up: output {self.out.topic_name} ({p['controller_type']}), joints {self.joint_names}, "
            f"teleop '{p['teleop_topic']}' (priority {p['teleop_priority']}, {p['teleop_timeout']} s), "
            f"autonomy '{p['autonomy_topic']}' (priority {p['autonomy_priority']}, {p['autonomy_timeout']} s, "
            f"disengaged after {p['autonomy_disengage_timeout']} s), "
            f"stop latch '{p['stop_topic']}' (monitor_timeout {p['monitor_timeout']} s), "
            f"autonomy_max_age {p['autonomy_max_age']} s"
        )

    # ------------------------------------------------------------------ parameters

    def _params(self) -> dict:
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        p = {
            "controller_type": d("controller_type", "joint_trajectory",
                                 "'joint_trajectory' (JointTrajectory on <controller_name>/joint_trajectory) or "
                                 "'forward_command' (Float64MultiArray on <controller_name>/commands)"),
            "controller_name": d("controller_name", "/arm_controller", "controller namespace the gate publishes to"),
            "joint_names": d("joint_names", None, "the controller's joints, in its order", kind="str[]"),
            "joint_lower_limits": d("joint_lower_limits", [], "optional lower position limits (rad), one per joint", kind="float[]"),
            "joint_upper_limits": d("joint_upper_limits", [], "optional upper position limits (rad), one per joint", kind="float[]"),
            "teleop_topic": d("teleop_topic", "~/teleop", "teleop input namespace (<ns>/joint_trajectory, <ns>/commands)"),
            "teleop_priority": d("teleop_priority", 100, "teleop priority (higher wins)"),
            "teleop_timeout": d("teleop_timeout", 0.5, "teleop input goes stale after this many seconds"),
            "teleop_disengages": d("teleop_disengages", True, "teleop activity disengages autonomy (re-engage explicitly)"),
            "autonomy_topic": d("autonomy_topic", "~/autonomy", "autonomy (planner) input namespace"),
            "autonomy_priority": d("autonomy_priority", 10, "autonomy priority (higher wins)"),
            "autonomy_timeout": d("autonomy_timeout", 0.3, "autonomy input goes stale after this many seconds: hold"),
            "autonomy_disengage_timeout": d("autonomy_disengage_timeout", 2.0,
                                            "autonomy silent (no command accepted, since the last one or the engage) "
                                            "for this many seconds disengages: a dead planner, not a slow plan; a "
                                            "planner started later then needs the operator's engage. > autonomy_timeout"),
            "autonomy_max_age": d("autonomy_max_age", 0.3, "an autonomy JointTrajectory whose non-zero header.stamp (its "
                                  "camera frame) is further than this many seconds from now is dropped; 0 = off"),
            "autonomy_max_speed": d("autonomy_max_speed", 3.0, "an autonomy point may lead the measured position by at most this "
                                    "(rad/s) x (its time_from_start + the measurement's age); 0 = no limit"),
            "autonomy_blocked_timeout": d("autonomy_blocked_timeout", 1.0,
                                          "every autonomy command bounded by autonomy_max_speed for this many seconds: "
                                          "the arm is not following (jammed, blocked); disengage and hold. 0 = never"),
            "stuck_joint_lead": d("stuck_joint_lead", 0.03, "rad an autonomy command may move on while its joint stands "
                                  "still before the joint counts as stuck (jammed, blocked); 0 = no check"),
            "stuck_joint_still": d("stuck_joint_still", 0.001, "rad a joint must move (since it last did) to count as moving"),
            "stuck_joint_steps": d("stuck_joint_steps", 2, "stuck control steps in a row that disengage autonomy and hold"),
            "stop_topic": d("stop_topic", DEFAULT_STOP_TOPIC, "latched protective stop (std_msgs/Bool, transient local)"),
            "require_monitor": d("require_monitor", True, "forward autonomy only while the stop topic has a publisher "
                                 "(and, with monitor_timeout, a recent message)"),
            "monitor_timeout": d("monitor_timeout", 0.5, "with require_monitor: no message on the stop topic for this "
                                 "many seconds disengages autonomy and holds (the monitor republishes at 20 Hz); "
                                 "0 = the publisher count only"),
            "joint_states_topic": d("joint_states_topic", "/joint_states", "measured joint positions"),
            "joint_states_timeout": d("joint_states_timeout", 0.5, "joint states older than this block engaging and hold autonomy"),
            "command_duration": d("command_duration", 0.1, "time_from_start (s) given to a Float64MultiArray forwarded as a trajectory"),
            "rate": d("rate", 50.0, "rate (Hz) at which timeouts are checked"),
        }
        require(p["controller_type"] in CONTROLLER_TYPES, "controller_type",
                f"is {p['controller_type']!r}; set it to one of {list(CONTROLLER_TYPES)}")
        require(len(p["joint_names"]) > 0 and all(p["joint_names"]), "joint_names",
                "is empty: set it to the controller's joint names")
        require(len(set(p["joint_names"])) == len(p["joint_names"]), "joint_names", "has duplicates")
        for k in ("teleop_timeout", "autonomy_timeout", "joint_states_timeout", "rate", "command_duration"):
            require(p[k] > 0 and math.isfinite(p[k]), k, f"is {p[k]}; it must be a positive number")
        for k in ("monitor_timeout", "autonomy_max_age"):
            require(p[k] >= 0 and math.isfinite(p[k]), k, f"is {p[k]}; it must be >= 0 s (0 = off)")
        require(p["autonomy_max_speed"] >= 0 and math.isfinite(p["autonomy_max_speed"]), "autonomy_max_speed",
                f"is {p['autonomy_max_speed']}; it must be >= 0 rad/s (0 = no limit)")
        require(p["stuck_joint_lead"] >= 0 and math.isfinite(p["stuck_joint_lead"]), "stuck_joint_lead",
                f"is {p['stuck_joint_lead']}; it must be >= 0 rad (0 = no check)")
        require(p["stuck_joint_still"] > 0 and math.isfinite(p["stuck_joint_still"]), "stuck_joint_still",
                f"is {p['stuck_joint_still']}; it must be > 0 rad")
        require(p["stuck_joint_steps"] >= 1, "stuck_joint_steps", f"is {p['stuck_joint_steps']}; it must be >= 1")
        require(p["autonomy_blocked_timeout"] >= 0 and math.isfinite(p["autonomy_blocked_timeout"]),
                "autonomy_blocked_timeout", f"is {p['autonomy_blocked_timeout']}; it must be >= 0 s (0 = never)")
        require(p["teleop_priority"] != p["autonomy_priority"], "teleop_priority", "must differ from autonomy_priority")
        # No "0 = never": a gate engaged for ever would let any planner started later move the arm.
        require(p["autonomy_timeout"] < p["autonomy_disengage_timeout"] < math.inf, "autonomy_disengage_timeout",
                f"is {p['autonomy_disengage_timeout']}; it must be a finite number of seconds above autonomy_timeout "
                f"({p['autonomy_timeout']} s): shorter silences hold and resume, longer ones disengage")
        self.limits = check_limits(p["joint_names"], p["joint_lower_limits"], p["joint_upper_limits"])
        check_overrides(self)
        self.p = p
        return p

    # ------------------------------------------------------------------ inputs

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_trajectory(self, name: str, msg: JointTrajectory):
        if name == "autonomy" and self._too_old(msg):
            return
        if not msg.points:
            self._reject(name, "empty trajectory (no points)")
            return
        try:
            index = [list(msg.joint_names).index(j) for j in self.joint_names]
        except ValueError:
            self._reject(name, f"joint_names {list(msg.joint_names)} do not cover {self.joint_names}")
            return
        out = JointTrajectory(joint_names=list(self.joint_names))
        previous = -1
        for pt in msg.points:
            if len(pt.positions) != len(msg.joint_names):
                self._reject(name, f"a point has {len(pt.positions)} positions for {len(msg.joint_names)} joints")
                return
            t = stamp_ns(pt.time_from_start)
            if t <= previous:
                self._reject(name, "time_from_start is not strictly increasing")
                return
            previous = t
            pos = np.asarray([pt.positions[i] for i in index], dtype=float)
            if not np.all(np.isfinite(pos)):
                self._reject(name, "non-finite position")
                return
            q = JointTrajectoryPoint(positions=self._clip(pos).tolist(), time_from_start=pt.time_from_start)
            if len(pt.velocities) == len(msg.joint_names):
                q.velocities = [float(pt.velocities[i]) for i in index]
                if not all(math.isfinite(v) for v in q.velocities):
                    self._reject(name, "non-finite velocity")
                    return
            out.points.append(q)
        self._accept(name, out)

    def _too_old(self, msg: JointTrajectory) -> bool:
        """A plan from an old camera frame is stale motion, however recently it arrived (a planner slower than
        autonomy_timeout would otherwise have each late plan forwarded as fresh). A zero stamp: receipt time only."""
        max_age, stamp = self.p["autonomy_max_age"], stamp_ns(msg.header.stamp)
        if max_age <= 0 or stamp == 0:
            return False
        age = (self._now() - stamp) * 1e-9
        if abs(age) <= max_age:
            return False
        log = self.get_logger()
        if age > 0:
            log.warning(f"dropping autonomy command: planned from a frame {age:.3f} s old (autonomy_max_age "
                        f"{max_age} s): is the planner too slow?", throttle_duration_sec=2.0)
        else:
            log.warning(f"dropping autonomy command: stamped {-age:.3f} s in the future of the gate's clock "
                        f"(autonomy_max_age {max_age} s): do the clocks agree?", throttle_duration_sec=2.0)
        return True

    def _on_array(self, name: str, msg: Float64MultiArray):
        pos = np.asarray(msg.data, dtype=float)
        if pos.size != len(self.joint_names) or not np.all(np.isfinite(pos)):
            self._reject(name, f"expected {len(self.joint_names)} finite positions, got {list(msg.data)}")
            return
        pt = JointTrajectoryPoint(positions=self._clip(pos).tolist(),
                                  time_from_start=seconds(self.p["command_duration"]).to_msg())
        self._accept(name, JointTrajectory(joint_names=list(self.joint_names), points=[pt]))

    def _clip(self, pos):
        lo, hi = self.limits
        return pos if lo is None else np.clip(pos, lo, hi)

    def _reject(self, name: str, why: str):
        self.get_logger().warning(f"dropping {name} command: {why}", throttle_duration_sec=2.0)

    def _limit_lead(self, traj: JointTrajectory, now: int) -> bool:
        """Bound how far autonomy leads the measured joints, in place; True if a point was bounded. A planner
        whose model never saw contact keeps commanding through a table it presses against; the limit bounds
        that wind-up, and so the force. The time a point may cover runs from the measurement (the arm has
        moved since), not from now."""
        v = self.p["autonomy_max_speed"]
        limited = False
        if v <= 0 or self.measured is None:
            return limited
        age = min(max(now - self.measured_ns, 0) * 1e-9, self.p["joint_states_timeout"])
        for pt in traj.points:
            t = max(stamp_ns(pt.time_from_start) * 1e-9, self.p["command_duration"]) + age
            pos = np.asarray(pt.positions)
            bounded = np.clip(pos, self.measured - v * t, self.measured + v * t)
            if np.any(bounded != pos):
                self.limited += 1
                limited = True
                self.get_logger().warning(
                    f"autonomy command leads the joints measured {t:.2f} s before it by "
                    f"{np.abs(pos - self.measured).max():.2f} rad: limited to {v * t:.2f} "
                    f"(autonomy_max_speed {v} rad/s); is the arm blocked?", throttle_duration_sec=2.0)
            pt.positions = self._clip(bounded).tolist()
        return limited

    def _check_blocked(self, limited: bool, now: int):
        """Disengage when the arm has not followed autonomy for autonomy_blocked_timeout. The surprise score
        misses most jammed joints in closed loop (models/README.md); an arm not following is the direct sign."""
        timeout = self.p["autonomy_blocked_timeout"]
        if not (limited and self.engaged) or timeout <= 0:
            self.limited_since = None
        elif self.limited_since is None:
            self.limited_since = now
        elif now - self.limited_since >= timeout * 1e9:
            self.limited_since = None
            self._set_engaged(False, f"the arm has not followed autonomy for {timeout} s (every command bounded by "
                                     f"autonomy_max_speed {self.p['autonomy_max_speed']} rad/s): is it blocked?")

    def _check_stuck(self, traj: JointTrajectory, now: int):
        """Disengage when a joint stands still while autonomy moves its command on: a jammed joint in two
        control steps, where the bound above takes a second. Compared only across new joint states."""
        if self.stuck is None or not (self.engaged and traj.points and self._measured_fresh(now)):
            return
        if self.measured_ns == self.stuck_measured_ns:
            return
        self.stuck_measured_ns = self.measured_ns
        if self.stuck.update(traj.points[0].positions, self.measured):
            self._set_engaged(False, f"joint '{self.joint_names[self.stuck.joint]}' stood still while autonomy moved "
                                     f"its command {self.stuck.excess:.3f} rad on: is it blocked?")

    def _accept(self, name: str, traj: JointTrajectory):
        now = self._now()
        if name == "autonomy":
            self._check_blocked(self._limit_lead(traj, now), now)
            self._check_stuck(traj, now)
        inp = self.inputs[name]
        inp.last_ns, inp.trajectory = now, traj
        inp.count += 1
        if name == "teleop" and self.engaged and self.p["teleop_disengages"]:
            self._set_engaged(False, "teleop pre-empted autonomy")
        self._update(now)
        if self.mode == name:
            self._forward(traj)

    def _on_stop(self, msg: Bool):
        self.monitor_ns = self._now()  # any message is a heartbeat: the monitor republishes its state
        if bool(msg.data) != self.stopped:
            self.stopped = bool(msg.data)
            self.get_logger().warning("protective stop latched" if self.stopped else "protective stop cleared")
            if self.stopped:
                self._set_engaged(False, "protective stop")
            else:  # the stop disengaged autonomy, and a reset does not engage it
                self.reason = "stop cleared; autonomy disengaged: engage to resume"
        self._update(self._now())

    def _on_joint_states(self, msg: JointState):
        names = list(msg.name)
        missing = [j for j in self.joint_names if j not in names or names.index(j) >= len(msg.position)]
        if missing:
            self._reject_joint_states(f"joint_states on {self.p['joint_states_topic']} arrive but lack {missing} "
                                      f"(they have {names}): check joint_names", 5.0)
            return
        pos = np.asarray([msg.position[names.index(j)] for j in self.joint_names], dtype=float)
        if not np.all(np.isfinite(pos)):
            # joint_state_broadcaster sends NaN for a joint without a position interface (or a faulted encoder):
            # not a measurement. It would make the lead limit and the HOLD NaN; staleness holds instead.
            self._reject_joint_states(f"ignoring joint_states with non-finite positions "
                                      f"{dict(zip(self.joint_names, pos.tolist()))}", 2.0)
            return
        self.measured, self.measured_ns = pos, self._now()
        self.joint_states_rejected = None
        if self.hold_pending and self.mode in ("hold", "stopped"):
            # A forward-command controller got nothing and still drives to its last target.
            self._hold("joint states back")
            self._publish_state()

    def _reject_joint_states(self, why: str, throttle: float):
        """Not a measurement: logged (throttled), and remembered so that a refused engage says why."""
        self.joint_states_rejected = (self._now(), why)
        self.get_logger().warning(why, throttle_duration_sec=throttle)

    def _on_engage(self, req: SetBool.Request, res: SetBool.Response):
        now = self._now()
        if req.data:
            problem = self._engage_problem(now)
            if problem:
                res.success, res.message = False, f"not engaged: {problem}"
                return res
            self._set_engaged(True, "engaged by request")
            res.success, res.message = True, "engaged: forwarding fresh autonomy commands"
        else:
            self._set_engaged(False, "disengaged by request")
            res.success, res.message = True, "disengaged: holding"
        self._update(now)
        return res

    def _measured_fresh(self, now: int) -> bool:
        return fresh(self.measured_ns, self.p["joint_states_timeout"], now)

    def _monitor_problem(self, now: int) -> str:
        """Why the monitor does not count as alive ("" if it does). The publisher count alone misses a killed
        monitor for as long as DDS keeps its publisher (~20 s with Fast DDS) and a hung one for ever."""
        if not self.p["require_monitor"]:
            return ""
        if self.count_publishers(self.p["stop_topic"]) == 0:
            return f"monitor gone: no publisher on {self.p['stop_topic']}"
        timeout = self.p["monitor_timeout"]
        if timeout > 0 and not fresh(self.monitor_ns, timeout, now):
            return f"surprise monitor silent for more than {timeout} s (nothing on {self.p['stop_topic']})"
        return ""

    def _forget_future(self, now: int) -> float:
        """After a backward clock jump, forget what was received in the future of the clock; how far (s) the
        newest of it lay ahead, 0 if nothing did. Kept, it would stay stale (and block engaging) until the clock
        caught up again: 100 s after a simulator restarted at 100 s."""
        jump = 0
        for inp in self.inputs.values():
            if inp.last_ns is not None and inp.last_ns > now:
                jump = max(jump, inp.last_ns - now)
                inp.clear()
        if self.measured_ns is not None and self.measured_ns > now:
            jump = max(jump, self.measured_ns - now)
            self.measured, self.measured_ns = None, None
        if self.monitor_ns is not None and self.monitor_ns > now:
            jump = max(jump, self.monitor_ns - now)
            self.monitor_ns = None
        return jump * 1e-9

    def _engage_problem(self, now: int) -> str:
        if self.stopped:
            return f"protective stop latched on {self.p['stop_topic']}; reset the monitor first"
        problem = self._monitor_problem(now)
        if problem:
            return problem
        if not self._measured_fresh(now):
            rejected = self.joint_states_rejected
            if rejected is not None and fresh(rejected[0], self.p["joint_states_timeout"], now):
                return rejected[1]  # they do arrive: "no joint states" would send the operator the wrong way
            return f"no fresh joint states on {self.p['joint_states_topic']}"
        if self.inputs["teleop"].fresh(now):
            return "teleop is active"
        return ""

    def _set_engaged(self, engaged: bool, why: str):
        """Engage or disengage; the caller's _update then recomputes the mode and publishes the state, once."""
        if engaged == self.engaged:
            return
        self.engaged = engaged
        self.engaged_ns = self._now()
        self.limited_since = None
        if self.stuck is not None:
            self.stuck.reset()
        # Only commands sent after this engage are forwarded: never a stale one from before.
        self.inputs["autonomy"].clear()
        if not engaged:
            self.reason = why  # what the disengaged hold reports
        self.get_logger().info(f"autonomy {'engaged' if engaged else 'disengaged'}: {why}")

    # ------------------------------------------------------------------ arbitration

    def _choose(self, now: int):
        """(mode, reason): which input is forwarded now, or why the gate holds."""
        jump = self._forget_future(now)
        if jump > 0:
            self.get_logger().warning(f"the clock jumped back by at least {jump:.3f} s: what arrived before the jump "
                                      f"is forgotten", throttle_duration_sec=2.0)
            if self.engaged:  # at once, rather than as the monitor's heartbeat, forgotten too, happens to lapse
                self._set_engaged(False, f"the clock jumped back by at least {jump:.3f} s: inputs from before the "
                                         f"jump are stale")
        if self.stopped:
            return "stopped", "protective stop latched"
        candidates = []
        if self.inputs["teleop"].fresh(now):
            candidates.append(self.inputs["teleop"])
        if self.engaged:
            monitor = self._monitor_problem(now)
            if monitor:
                self._set_engaged(False, monitor)
            elif self._autonomy_gone(now):
                self._set_engaged(False, f"autonomy silent for more than {self.p['autonomy_disengage_timeout']} s "
                                         f"(autonomy_disengage_timeout): engage again once the planner runs")
            elif self.inputs["autonomy"].fresh(now) and self._measured_fresh(now):
                candidates.append(self.inputs["autonomy"])
        if candidates:
            best = max(candidates, key=lambda i: i.priority)
            return best.name, f"forwarding {best.name}"
        if self.engaged:
            a = self.inputs["autonomy"]
            if not self._measured_fresh(now):
                # Blind: neither the hold nor the speed limit would know where the arm is.
                return "hold", f"joint states older than {self.p['joint_states_timeout']} s"
            return "hold", ("engaged, waiting for autonomy commands" if a.last_ns is None
                            else f"autonomy silent for more than {a.timeout} s")
        if self.mode == "teleop":
            return "hold", f"teleop silent for more than {self.inputs['teleop'].timeout} s"
        return "hold", self.reason  # disengaged: the event that left the gate here, until the next one

    def _autonomy_gone(self, now: int) -> bool:
        """Engaged, but no autonomy command accepted for autonomy_disengage_timeout (since the last one, or since
        the engage): a dead planner. Holding engaged, a planner started later would move the arm unasked."""
        last = self.inputs["autonomy"].last_ns
        return now - (self.engaged_ns if last is None else last) > self.p["autonomy_disengage_timeout"] * 1e9

    def _update(self, now: int):
        """Recompute the mode and its reason; hold on leaving a forwarding mode; publish ~/state if any changed."""
        mode, self.reason = self._choose(now)
        if mode != self.mode:
            previous, self.mode = self.mode, mode
            if mode in ("hold", "stopped"):
                self._hold(f"{previous} -> {mode}: {self.reason}")
            else:
                self.hold_position, self.hold_pending = None, False
                self.get_logger().info(f"{previous} -> {mode}")
        if (self.mode, self.engaged, self.stopped, self.reason) != self.published:
            self._publish_state()

    def _tick(self):
        self._update(self._now())

    # ------------------------------------------------------------------ output

    def _forward(self, traj: JointTrajectory):
        self.forwarded += 1
        if self.p["controller_type"] == "joint_trajectory":
            # header.stamp stays zero: joint_trajectory_controller starts a zero-stamped trajectory on receipt,
            # on its own clock; any other stamp (the planner's frame, a clock that disagrees) shifts its start.
            self.out.publish(traj)
        else:
            self.out.publish(Float64MultiArray(data=list(traj.points[0].positions)))

    def _hold(self, why: str):
        """Publish one hold at the measured position, captured now."""
        self.hold_pending = not self._measured_fresh(self._now())
        if self.hold_pending:  # holding at an old position could move the arm back to it
            self.hold_position = None
            if self.p["controller_type"] == "joint_trajectory":
                # An empty trajectory makes joint_trajectory_controller stop and hold where it is.
                msg = JointTrajectory(joint_names=list(self.joint_names))
                self.out.publish(msg)
            self.get_logger().warning(f"HOLD ({why}) without a fresh measured position")
            return
        pos = self._clip(self.measured.copy())
        self.hold_position = pos.tolist()
        if self.p["controller_type"] == "joint_trajectory":
            pt = JointTrajectoryPoint(positions=self.hold_position, velocities=[0.0] * len(pos),
                                      time_from_start=seconds(self.p["command_duration"]).to_msg())
            msg = JointTrajectory(joint_names=list(self.joint_names), points=[pt])  # zero stamp: start now
            self.out.publish(msg)
        else:
            self.out.publish(Float64MultiArray(data=self.hold_position))
        self.get_logger().info(f"HOLD at {np.round(pos, 4).tolist()} ({why})")

    def _state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "engaged": self.engaged,
            "stopped": self.stopped,
            "reason": self.reason,
            "hold_position": self.hold_position,
            "joint_names": list(self.joint_names),
            "stamp_ns": self._now(),
        }

    def _publish_state(self):
        self.published = (self.mode, self.engaged, self.stopped, self.reason)
        self.state_pub.publish(String(data=json.dumps(self._state_dict())))

    def _diagnostics(self):
        now = self._now()
        level = DiagnosticStatus.OK
        if self.mode == "stopped":
            level = DiagnosticStatus.ERROR
        elif not self._measured_fresh(now):
            level = DiagnosticStatus.WARN
        st = DiagnosticStatus(level=level, name="jepa_wm: command_gate", hardware_id="jepa_wm",
                              message=f"{self.mode}: {self.reason}")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("mode", self.mode), ("engaged", self.engaged), ("stopped", self.stopped),
            ("output", self.out.topic_name), ("forwarded", self.forwarded), ("autonomy_points_limited", self.limited),
            ("teleop_messages", self.inputs["teleop"].count), ("autonomy_messages", self.inputs["autonomy"].count),
            ("joint_states_age_s", "never" if self.measured_ns is None else f"{(now - self.measured_ns) / 1e9:.3f}"),
            ("monitor_age_s", "never" if self.monitor_ns is None else f"{(now - self.monitor_ns) / 1e9:.3f}"),
        )]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def main(args=None) -> int:
    return main_for(CommandGate, args)
