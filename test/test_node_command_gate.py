"""The command gate as a real process on real DDS: arbitration, holds, the stop latch, watchdogs, parameters."""

import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for node tests")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from jepa_wm.nodes.common import LATCHED_QOS  # noqa: E402

JOINTS = ["base_yaw", "shoulder", "elbow"]
MEASURED = [0.1, -0.2, 0.3]
AUTO = [0.3, 0.0, 0.2]  # a planner's command: within autonomy_max_speed x 0.1 s of the measured joints


def traj(*points, names=JOINTS):
    """A trajectory with one point every 0.1 s."""
    out = JointTrajectory(joint_names=list(names))
    for i, positions in enumerate(points):
        pt = JointTrajectoryPoint(positions=[float(x) for x in positions])
        pt.time_from_start.nanosec = 100_000_000 * (i + 1)
        out.points.append(pt)
    return out


class Rig:
    """Test-side arm: publishes joint_states and, like the surprise monitor, republishes its stop state at 20 Hz
    (`monitor_on = False`: a hung monitor, its publisher still there); records the gate's output. With
    `sim_time`, it also publishes /clock (a gate started with use_sim_time), from 100 s on."""

    def __init__(self, ros, controller_type="joint_trajectory", sim_time=False):
        self.ros, n = ros, ros.node
        if sim_time:
            clock = n.create_publisher(Clock, "/clock", 10)
            self.jump_clock(100.0)
            n.create_timer(0.01, lambda: clock.publish(Clock(clock=self.sim_now())))
        self.measured = list(MEASURED)
        self.joint_states_on = True
        js = n.create_publisher(JointState, "/joint_states", 10)
        n.create_timer(0.05, lambda: self.joint_states_on and js.publish(JointState(name=JOINTS, position=self.measured)))
        self.stop = n.create_publisher(Bool, "/jepa_wm/stop", LATCHED_QOS)
        self.stopped, self.monitor_on = False, True
        self.set_stop(False)
        n.create_timer(0.05, lambda: self.monitor_on and self.stop.publish(Bool(data=self.stopped)))
        if controller_type == "joint_trajectory":
            self.out = ros.collect(JointTrajectory, "/arm_controller/joint_trajectory")
        else:
            self.out = ros.collect(Float64MultiArray, "/arm_controller/commands")
        self.states = ros.collect(String, "/command_gate/state", LATCHED_QOS)
        self.auto = n.create_publisher(JointTrajectory, "/command_gate/autonomy/joint_trajectory", 10)
        self.auto_arr = n.create_publisher(Float64MultiArray, "/command_gate/autonomy/commands", 10)
        self.teleop = n.create_publisher(JointTrajectory, "/command_gate/teleop/joint_trajectory", 10)

    def state(self):
        return json.loads(self.states[-1][1].data) if self.states else {}

    def set_stop(self, stopped):
        self.stopped = stopped
        self.stop.publish(Bool(data=stopped))

    def jump_clock(self, to_s):
        """/clock goes on from `to_s` (as after /sim/reset), advancing with the wall clock."""
        self.clock_base, self.clock_t0 = to_s, time.monotonic()

    def sim_now(self):
        t = self.clock_base + time.monotonic() - self.clock_t0
        return Time(sec=int(t), nanosec=int(t % 1 * 1e9))

    def wait_up(self, gate):
        assert gate.wait_output("gate up", 30), gate.output
        assert self.ros.spin_until(lambda: self.states and self.ros.node.count_subscribers("/command_gate/autonomy/joint_trajectory") > 0, 15)
        self.ros.spin_for(1.0)  # joint states and the stop latch reach the gate

    def wait_log(self, gate, text, timeout=5.0):
        """gate.wait_output, spinning meanwhile: the fake monitor must go on publishing."""
        return self.ros.spin_until(lambda: text in gate.output, timeout)

    def engage(self, on=True):
        return self.ros.call(SetBool, "/command_gate/engage", SetBool.Request(data=on))

    def stream(self, pub, make, seconds, period=0.05):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pub.publish(make())
            self.ros.spin_for(period)

    @staticmethod
    def positions(msg):
        return list(msg.points[0].positions) if isinstance(msg, JointTrajectory) else list(msg.data)


def test_silent_autonomy_holds_at_measured_position_and_never_replays(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    rig.wait_up(gate)
    res = rig.engage()
    assert res.success, res.message
    rig.stream(rig.auto, lambda: traj(AUTO), 1.0)
    forwarded = [m for _, m in rig.out if rig.positions(m) == AUTO]
    assert len(forwarded) >= 10, "fresh autonomy commands are forwarded"
    assert rig.state()["mode"] == "autonomy"
    # The arm is elsewhere (the controller lags), then the planner goes silent.
    rig.measured = [0.25, 0.15, -0.05]
    rig.stream(rig.auto, lambda: traj(AUTO), 0.3)
    n_before, t_silent = len(rig.out), time.monotonic()
    assert ros.spin_until(lambda: any(rig.positions(m) != AUTO for _, m in rig.out[n_before:]), 2.0)
    t_hold, hold = next((t, m) for t, m in rig.out[n_before:] if rig.positions(m) != AUTO)
    assert t_hold - t_silent < 0.3 + 0.25, f"hold came {t_hold - t_silent:.3f} s after the planner stopped (timeout 0.3 s)"
    assert np.allclose(rig.positions(hold), rig.measured, atol=1e-9), "hold is at the measured position"
    assert list(hold.points[0].velocities) == [0.0, 0.0, 0.0]
    ros.spin_for(1.0)
    later = rig.out[rig.out.index((t_hold, hold)) + 1:]
    assert not any(rig.positions(m) == AUTO for _, m in later), "the stale command is never replayed"
    assert rig.state()["mode"] == "hold" and "silent" in rig.state()["reason"]
    assert gate.alive()


def test_the_state_tells_every_engage_and_disengage_even_while_the_mode_stays(ros, start_node):
    # The monitor scores while the gate is engaged: a disengage during a hold must reach it.
    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    assert ros.spin_until(lambda: rig.state().get("engaged") is True, 2.0), rig.state()
    assert rig.state()["mode"] == "hold"  # no autonomy command yet
    assert rig.engage(False).success
    assert ros.spin_until(lambda: rig.state().get("engaged") is False, 2.0), rig.state()
    assert rig.state()["mode"] == "hold"


def test_teleop_preempts_autonomy(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.6)
    assert rig.state()["mode"] == "autonomy"
    n0 = len(rig.out)
    # Teleop (joint names in another order) while the planner keeps streaming.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        rig.auto.publish(traj(AUTO))
        rig.teleop.publish(traj([-0.3, 0.2, -0.1], names=["elbow", "shoulder", "base_yaw"]))
        ros.spin_for(0.05)
    after = [rig.positions(m) for _, m in rig.out[n0:]]
    assert [-0.1, 0.2, -0.3] in after, "teleop is forwarded, reordered to the controller's joints"
    first_teleop = after.index([-0.1, 0.2, -0.3])
    assert AUTO not in after[first_teleop:], "no autonomy command after teleop took over"
    st = rig.state()
    assert st["mode"] == "teleop" and not st["engaged"], st
    # Teleop released: hold at the measured position, autonomy stays disengaged until re-engaged.
    n1 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 1.2)
    after = [rig.positions(m) for _, m in rig.out[n1:]]
    assert after and np.allclose(after[0], MEASURED) and AUTO not in after
    assert rig.state()["mode"] == "hold"


def test_stop_latch_holds_and_blocks_everything_until_reset(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    # A rejected command logs a throttled warning; the stop's warning must not crash the gate after it
    # (rclpy's deprecated Logger.warn() shares one call site between both and raised here).
    rig.auto_arr.publish(Float64MultiArray(data=[float("nan")] * 3))
    assert rig.wait_log(gate, "dropping autonomy command"), gate.output
    n0 = len(rig.out)
    rig.set_stop(True)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.3)
    rig.stream(rig.teleop, lambda: traj([0.7, 0.7, 0.7]), 0.5)
    after = [rig.positions(m) for _, m in rig.out[n0:]]
    i = next(i for i, p in enumerate(after) if p != AUTO)
    assert np.allclose(after[i], MEASURED), "stop -> one hold at the measured position"
    assert after[i + 1:] == [], f"nothing forwarded while stopped: {after[i + 1:]}"
    assert rig.state()["mode"] == "stopped"
    res = rig.engage()
    assert not res.success and "stop" in res.message
    # Reset (the monitor publishes False): still disengaged, nothing forwarded until re-engaged.
    rig.set_stop(False)
    n1 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert AUTO not in [rig.positions(m) for _, m in rig.out[n1:]]
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert AUTO in [rig.positions(m) for _, m in rig.out[n1:]]
    assert gate.alive()


def test_autonomy_leads_the_measured_joints_by_at_most_max_speed_times_time(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")  # autonomy_max_speed 3 rad/s
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    # A planner pressing the arm into a table: its commands run ahead of where the arm is.
    rig.stream(rig.auto, lambda: traj([1.5, -0.2, 0.3], [2.5, -0.2, -1.0]), 0.5)
    got = [np.array([p.positions for p in m.points]) for _, m in rig.out if len(m.points) == 2]
    assert got, "bounded, not dropped"
    lead = got[-1] - np.array(MEASURED)
    # 3 rad/s x (0.1 or 0.2 s + the age of the joint states, published every 0.05 s here).
    assert 0.3 <= lead[0, 0] <= 0.6 and np.isclose(lead[1, 0] - lead[0, 0], 0.3), got[-1]
    assert np.isclose(lead[1, 2], -lead[1, 0]) and np.allclose(lead[:, 1], 0.0), got[-1]
    assert gate.wait_output("autonomy command leads the joints measured", 5), gate.output
    # Teleop is a person's command: not limited.
    rig.stream(rig.teleop, lambda: traj([1.5, -0.2, 0.3]), 0.3)
    assert [1.5, -0.2, 0.3] in [rig.positions(m) for _, m in rig.out]


def test_an_arm_that_does_not_follow_autonomy_is_disengaged_and_held(ros, start_node):
    gate = start_node("command_gate", "gate.yaml", {"autonomy_blocked_timeout": 0.5, "stuck_joint_lead": 0.0})
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.8)  # within the lead bound for longer than the timeout: no trip
    assert rig.state()["engaged"]
    # A jammed shoulder: the measured joints stay put while the planner keeps asking for more.
    n0 = len(rig.out)
    rig.stream(rig.auto, lambda: traj([0.1, 1.5, 0.3]), 1.2)
    st = rig.state()
    assert not st["engaged"] and st["mode"] == "hold" and "blocked" in st["reason"], st
    after = [rig.positions(m) for _, m in rig.out[n0:]]
    assert np.allclose(after[-1], MEASURED), "held where the arm is"
    # Bounded while it lasted (0.3 rad + 3 rad/s x the measurement's age), then nothing more.
    assert all(p[1] <= MEASURED[1] + 0.6 for p in after), after
    assert gate.wait_output("is it blocked?", 5), gate.output
    n1 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert all(rig.positions(m) != AUTO for _, m in rig.out[n1:]), "autonomy needs an explicit re-engage"
    assert gate.alive()


def test_a_joint_that_stands_still_while_autonomy_moves_it_on_is_disengaged_at_once(ros, start_node):
    gate = start_node("command_gate", "gate.yaml", {"autonomy_blocked_timeout": 0.0})
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    command = np.array(MEASURED)

    def step(follows):
        """The arm reaches the last command on the joints that follow; the planner moves 0.02 rad on."""
        nonlocal command
        rig.measured = np.where(follows, command, rig.measured).tolist()
        ros.spin_for(0.06)  # a joint state with the new position reaches the gate
        command = command + 0.02
        rig.auto.publish(traj(command))
        ros.spin_for(0.04)

    for _ in range(10):
        step([True, True, True])
    assert rig.state()["engaged"], "an arm that follows a slow ramp is not stuck"
    steps = 0
    while rig.state()["engaged"] and steps < 6:  # the elbow jams
        step([True, True, False])
        steps += 1
    st = rig.state()
    assert not st["engaged"] and st["mode"] == "hold" and "'elbow' stood still" in st["reason"], st
    # Its command 0.02 rad on per step: past 0.03 rad at the second, stuck twice in a row at the third.
    assert steps <= 3, f"disengaged after {steps} commands past the jam"
    ros.spin_for(0.2)
    assert np.allclose(rig.positions(rig.out[-1][1]), rig.measured), "held where the arm is"
    assert gate.wait_output("is it blocked?", 5), gate.output


def test_stale_joint_states_hold_without_moving_the_arm_back(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")  # joint_states_timeout 0.5 s
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    n0 = len(rig.out)
    rig.joint_states_on = False  # the joint state broadcaster dies; the planner keeps going
    rig.stream(rig.auto, lambda: traj(AUTO), 1.2)
    after = [m for _, m in rig.out[n0:]]
    hold = next(i for i, m in enumerate(after) if not m.points or rig.positions(m) != AUTO)
    assert not after[hold].points, "the hold is an empty trajectory: no position the gate cannot vouch for"
    assert after[hold + 1:] == [], "nothing forwarded while blind"
    st = rig.state()
    assert st["mode"] == "hold" and st["engaged"] and "joint states" in st["reason"], st
    rig.joint_states_on = True  # back: autonomy resumes without a re-engage
    n1 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert AUTO in [rig.positions(m) for _, m in rig.out[n1:] if m.points]
    assert gate.alive()


def test_forward_command_controller_and_missing_monitor(ros, start_node):
    gate = start_node("command_gate", "gate.yaml", {"controller_type": "forward_command", "autonomy_max_speed": 0.0,
                                                    "joint_lower_limits": [-1.0, -1.0, -1.0],
                                                    "joint_upper_limits": [1.0, 1.0, 2.4]})
    rig = Rig(ros, "forward_command")
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto_arr, lambda: Float64MultiArray(data=[0.4, 0.4, 9.0]), 0.5)
    got = [list(m.data) for _, m in rig.out]
    assert [0.4, 0.4, 2.4] in got, "forwarded as Float64MultiArray, clipped to the joint limits"
    # The monitor disappears: autonomy is disengaged and the arm holds.
    n0 = len(rig.out)
    rig.monitor_on = False
    ros.node.destroy_publisher(rig.stop)
    rig.stream(rig.auto_arr, lambda: Float64MultiArray(data=[0.4, 0.4, 0.4]), 1.0)
    after = [list(m.data) for _, m in rig.out[n0:]]
    assert any(np.allclose(a, MEASURED) for a in after), after
    last_hold = max(i for i, a in enumerate(after) if np.allclose(a, MEASURED))
    assert after[last_hold + 1:] == []
    assert not rig.state()["engaged"] and "monitor" in rig.state()["reason"]


def test_a_hold_due_while_blind_is_placed_when_joint_states_return(ros, start_node):
    # A forward-command controller keeps driving to its last target until it gets a new one.
    gate = start_node("command_gate", "gate.yaml", {"controller_type": "forward_command"})
    rig = Rig(ros, "forward_command")
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto_arr, lambda: Float64MultiArray(data=AUTO), 0.5)
    rig.joint_states_on = False
    rig.stream(rig.auto_arr, lambda: Float64MultiArray(data=AUTO), 1.0)
    rig.set_stop(True)  # the monitor stops while the gate cannot see the arm
    ros.spin_for(0.5)
    assert rig.state()["mode"] == "stopped" and rig.state()["hold_position"] is None
    n0 = len(rig.out)
    rig.measured = [0.25, -0.1, 0.25]  # the arm went on towards its last target meanwhile
    rig.joint_states_on = True
    ros.spin_for(1.0)
    after = [list(m.data) for _, m in rig.out[n0:]]
    assert after and np.allclose(after[0], rig.measured), after
    assert len(after) == 1, "one hold, then nothing while stopped"
    assert rig.state()["mode"] == "stopped" and np.allclose(rig.state()["hold_position"], rig.measured)
    assert gate.alive()


def finite(msg):
    """Every number the controller gets is finite."""
    if isinstance(msg, Float64MultiArray):
        return all(math.isfinite(x) for x in msg.data)
    return all(math.isfinite(x) for p in msg.points for x in (*p.positions, *p.velocities))


def test_non_finite_joint_states_and_teleop_velocities_never_reach_the_controller(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.state()["mode"] == "autonomy"
    # joint_state_broadcaster publishes NaN for a joint without a position interface; the planner goes on.
    n0 = len(rig.out)
    rig.measured = [0.1, float("nan"), 0.3]
    rig.stream(rig.auto, lambda: traj(AUTO), 1.2)
    after = [m for _, m in rig.out[n0:]]
    assert all(finite(m) for m in after), [list(m.points[0].positions) for m in after if m.points]
    hold = next(i for i, m in enumerate(after) if not m.points or rig.positions(m) != AUTO)
    assert not after[hold].points and after[hold + 1:] == [], "a blind hold (empty trajectory), then nothing"
    st = rig.state()
    assert st["mode"] == "hold" and "joint states" in st["reason"] and st["hold_position"] is None, st
    assert rig.wait_log(gate, "ignoring joint_states with non-finite positions"), gate.output
    # Teleop with non-finite velocities is dropped like non-finite positions.
    bad = traj([0.1, -0.2, 0.3])
    bad.points[0].velocities = [float("nan"), float("inf"), 0.0]
    n1 = len(rig.out)
    rig.stream(rig.teleop, lambda: bad, 0.3)
    assert rig.out[n1:] == [], [m.points[0].velocities for _, m in rig.out[n1:]]
    assert gate.wait_output("dropping teleop command: non-finite velocity", 5), gate.output
    assert gate.alive()


def test_a_backward_clock_jump_holds_and_disengages(ros, start_node):
    gate = start_node("command_gate", "gate.yaml", {"use_sim_time": True})
    rig = Rig(ros, sim_time=True)  # /clock from 100 s
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.state()["mode"] == "autonomy"
    # /sim/reset: /clock restarts at 0; the planner is dead from here on, joint states and the monitor go on.
    n0 = len(rig.out)
    rig.jump_clock(0.0)
    ros.spin_for(1.0)
    after = [m for _, m in rig.out[n0:]]
    assert after, "a hold after the jump"
    assert AUTO not in [rig.positions(m) for m in after if m.points], "no stale command after the jump"
    assert np.allclose(rig.positions(after[-1]), MEASURED), "held where the arm is"
    st = rig.state()
    assert st["mode"] == "hold" and not st["engaged"] and "clock jumped back" in st["reason"], st
    # Nothing from before the jump blocks a re-engage: autonomy resumes on fresh commands.
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.positions(rig.out[-1][1]) == AUTO and rig.state()["mode"] == "autonomy"


def test_a_silent_monitor_disengages_and_holds(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")  # monitor_timeout 0.5 s
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.state()["mode"] == "autonomy"
    # The monitor hangs (or was SIGKILLed): its publisher is still counted, but it no longer republishes.
    n0, t_silent = len(rig.out), time.monotonic()
    rig.monitor_on = False
    rig.stream(rig.auto, lambda: traj(AUTO), 1.0)
    after = [(t, rig.positions(m)) for t, m in rig.out[n0:]]
    hold = next((i for i, (_, p) in enumerate(after) if p != AUTO), None)
    assert hold is not None, "a hold once the monitor fell silent"
    assert np.allclose(after[hold][1], MEASURED) and after[hold + 1:] == [], after
    assert after[hold][0] - t_silent < 0.5 + 0.3, f"held {after[hold][0] - t_silent:.2f} s after the monitor fell silent"
    reason = "surprise monitor silent for more than 0.5 s"
    st = rig.state()
    assert st["mode"] == "hold" and not st["engaged"] and reason in st["reason"], st
    res = rig.engage()
    assert not res.success and reason in res.message, res.message
    rig.monitor_on = True  # back: engaging works again
    ros.spin_for(0.2)
    assert rig.engage().success


def test_autonomy_planned_from_a_stale_frame_is_not_forwarded(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")  # autonomy_max_age 0.3 s
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    stale = [0.2, -0.1, 0.25]

    def stamped(positions, age):
        """The planner stamps its plan with the camera frame it came from: `age` s ago."""
        msg = traj(positions)
        msg.header.stamp = (ros.node.get_clock().now() - Duration(nanoseconds=int(age * 1e9))).to_msg()
        return msg

    # A planner that takes 0.4 s per plan, and one whose clock runs 1 s ahead: neither may move the arm.
    rig.stream(rig.auto, lambda: stamped(stale, 0.4), 0.5)
    rig.stream(rig.auto, lambda: stamped(stale, -1.0), 0.3)
    assert [m for _, m in rig.out if m.points and rig.positions(m) == stale] == []
    assert rig.state()["mode"] == "hold"
    assert rig.wait_log(gate, "dropping autonomy command: planned from a frame 0.4"), gate.output
    assert rig.wait_log(gate, "in the future of the gate's clock"), gate.output
    # Fresh frames are forwarded, with a zero stamp: the controller starts them on receipt.
    n0 = len(rig.out)
    rig.stream(rig.auto, lambda: stamped(AUTO, 0.05), 0.5)
    forwarded = [m for _, m in rig.out[n0:] if rig.positions(m) == AUTO]
    assert forwarded and rig.state()["mode"] == "autonomy"
    assert all(m.header.stamp.sec == 0 and m.header.stamp.nanosec == 0 for _, m in rig.out), "output stamps are zero"


@pytest.mark.parametrize("overrides,needle", [
    ({"controller_type": "velocity"}, "controller_type"),
    ({"joint_names": ["a", "b"], "joint_lower_limits": [0.0], "joint_upper_limits": [1.0]}, "joint_lower_limits"),
    ({"autonomy_timeout": -1.0}, "autonomy_timeout"),
    ({"autonomy_max_speed": -3.0}, "autonomy_max_speed"),
    ({"autonomy_blocked_timeout": -1.0}, "autonomy_blocked_timeout"),
    ({"monitor_timeout": -0.5}, "monitor_timeout"),
    ({"autonomy_max_age": -0.3}, "autonomy_max_age"),
    ({"stuck_joint_still": 0.0}, "stuck_joint_still"),
    ({"teleop_timeout": "soon"}, "teleop_timeout"),
])
def test_invalid_parameters_refuse_to_start(start_node, overrides, needle):
    gate = start_node("command_gate", "gate.yaml", overrides)
    assert gate.proc.wait(timeout=30) == 2
    assert f"parameter '{needle}'" in gate.output and "refusing to start" in gate.output, gate.output


def test_missing_joint_names_refuses_to_start(start_node):
    gate = start_node("command_gate")
    assert gate.proc.wait(timeout=30) == 2
    assert "parameter 'joint_names' is required" in gate.output, gate.output


def test_empty_joint_names_are_called_empty(start_node):
    # Set, to []: "is required and was not set" would send the user looking for a missing line.
    gate = start_node("command_gate", "gate.yaml", {"joint_names": []})
    assert gate.proc.wait(timeout=30) == 2
    assert "parameter 'joint_names' is empty" in gate.output, gate.output


def test_a_misspelt_parameter_refuses_to_start_before_the_gate_is_up(ros, start_node):
    states = ros.collect(String, "/command_gate/state", LATCHED_QOS)
    gate = start_node("command_gate", "gate.yaml", {"autonomy_timout": 5.0})
    assert gate.proc.wait(timeout=30) == 2
    assert "did you mean 'autonomy_timeout'" in gate.output and "refusing to start" in gate.output, gate.output
    assert "gate up" not in gate.output, "a gate that refuses to start never said it was up"
    ros.spin_for(0.5)
    assert states == [], "nor published a latched state"


def gate_diagnostics(diags, after):
    """The gate's /diagnostics statuses received after monotonic time `after`."""
    return [s for t, m in diags if t > after for s in m.status if s.name == "jepa_wm: command_gate"]


def settled(ros, rig, diags, quiet=1.3, timeout=8.0):
    """(state, the gate's diagnostics message) once ~/state has been quiet for longer than the 1 Hz diagnostics
    period: a diagnostics message received since then was made from that state."""
    assert ros.spin_until(lambda: rig.states and time.monotonic() - rig.states[-1][0] > quiet, timeout), rig.state()
    after = gate_diagnostics(diags, rig.states[-1][0] + 0.1)
    assert after, "no diagnostics since the state settled"
    return rig.state(), after[-1].message


def test_the_state_and_diagnostics_give_the_same_current_reason(ros, start_node):
    from diagnostic_msgs.msg import DiagnosticArray

    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.state()["mode"] == "autonomy"
    # The planner is killed: "hold: engaged by request" on /diagnostics was the engage, not why it holds now.
    state, message = settled(ros, rig, diags)
    assert state["mode"] == "hold" and "autonomy silent for more than" in state["reason"], state
    assert message == f"hold: {state['reason']}", message
    # Teleop: forwarded, and both say so.
    teleop_on = [True]
    ros.node.create_timer(0.05, lambda: teleop_on[0] and rig.teleop.publish(traj(MEASURED)))
    assert ros.spin_until(lambda: rig.state()["mode"] == "teleop", 2.0), rig.state()
    state, message = settled(ros, rig, diags)
    assert state["mode"] == "teleop" and message == "teleop: forwarding teleop", (state, message)
    teleop_on[0] = False
    assert ros.spin_until(lambda: rig.state()["mode"] == "hold", 2.0), rig.state()
    state, message = settled(ros, rig, diags)
    assert state["mode"] == "hold" and message == f"hold: {state['reason']}", (state, message)
    assert "teleop silent for more than 0.5 s" in state["reason"], state


def test_a_stop_publishes_one_consistent_state_and_its_reset_says_why_the_gate_holds(ros, start_node):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    gate = start_node("command_gate", "gate.yaml")
    rig = Rig(ros)
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    # Every state, however close together: the Rig's depth-1 subscription would keep only the newer of two.
    deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    every = ros.collect(String, "/command_gate/state", deep)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert rig.state()["mode"] == "autonomy"
    rig.set_stop(True)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    states = [json.loads(m.data) for _, m in every]
    assert states[-1]["mode"] == "stopped" and not states[-1]["engaged"], states[-1]
    for st in states:  # never "autonomy, disengaged, stopped": the mode is recomputed before the state goes out
        assert st["stopped"] == (st["mode"] == "stopped") and (st["engaged"] or st["mode"] != "autonomy"), st
    # The monitor is reset: the gate holds, disengaged, and says so; not "protective stop".
    rig.set_stop(False)
    state, message = settled(ros, rig, diags)
    assert state["mode"] == "hold" and not state["stopped"] and not state["engaged"], state
    assert state["reason"] == "stop cleared; autonomy disengaged: engage to resume", state
    assert message == f"hold: {state['reason']}", message


def test_engage_names_the_joints_that_joint_states_lack(ros, start_node):
    gate = start_node("command_gate", "gate.yaml", {"joint_names": ["j1", "j2", "j3"]})
    rig = Rig(ros)  # joint states of base_yaw, shoulder, elbow at 20 Hz
    rig.wait_up(gate)
    res = rig.engage()
    assert not res.success
    assert ("joint_states on /joint_states arrive but lack ['j1', 'j2', 'j3'] (they have ['base_yaw', 'shoulder', "
            "'elbow']): check joint_names") in res.message, res.message
    rig.joint_states_on = False  # and once they stop coming, that is what it says
    ros.spin_for(0.8)
    res = rig.engage()
    assert not res.success and "no fresh joint states on /joint_states" in res.message, res.message


def test_a_planner_silent_for_autonomy_disengage_timeout_needs_a_new_engage(ros, start_node):
    gate = start_node("command_gate", "gate.yaml")  # autonomy_timeout 0.3 s, autonomy_disengage_timeout 2.0 s
    rig = Rig(ros)
    rig.wait_up(gate)
    assert rig.engage().success
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    # A slow plan: the gate holds, stays engaged, and resumes.
    ros.spin_for(0.8)
    assert rig.state()["mode"] == "hold" and rig.state()["engaged"], rig.state()
    n0 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.5)
    assert AUTO in [rig.positions(m) for _, m in rig.out[n0:]] and rig.state()["mode"] == "autonomy"
    # The planner dies (kill -9): the gate holds, then disengages.
    ros.spin_for(2.6)
    st = rig.state()
    assert st["mode"] == "hold" and not st["engaged"] and "autonomy_disengage_timeout" in st["reason"], st
    assert rig.wait_log(gate, "autonomy disengaged: autonomy silent for more than 2.0 s"), gate.output
    # A planner started later (a respawn) does not move the arm: the operator engages again.
    n1 = len(rig.out)
    rig.stream(rig.auto, lambda: traj(AUTO), 0.6)
    assert AUTO not in [rig.positions(m) for _, m in rig.out[n1:]] and rig.state()["mode"] == "hold"
    # The silence counts from the engage too: an engage with no planner running lapses.
    assert rig.engage().success
    ros.spin_for(2.6)
    assert not rig.state()["engaged"] and "autonomy_disengage_timeout" in rig.state()["reason"], rig.state()


def test_autonomy_disengage_timeout_must_exceed_autonomy_timeout(start_node):
    gate = start_node("command_gate", "gate.yaml", {"autonomy_disengage_timeout": 0.3})
    assert gate.proc.wait(timeout=30) == 2
    assert ("parameter 'autonomy_disengage_timeout' is 0.3; it must be a finite number of seconds above "
            "autonomy_timeout (0.3 s)") in gate.output, gate.output
