"""The surprise monitor as a real process: starts latched, latches on surprise and on a silent camera, survives bad
frames."""

import json
import re
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for node tests")
pytest.importorskip("jepa_wm.data.images", reason="jepa_wm.data.images (camera frame decoding) is not in this checkout")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from jepa_wm.nodes.common import LATCHED_QOS, SENSOR_QOS, image_msg_from_rgb, stamp_ns, vector_from_msg, vector_msg  # noqa: E402

DT = 0.1


class Camera:
    """Test-side camera: frames stamped exactly k x DT apart, a prediction per observed latent."""

    def __init__(self, ros):
        self.ros, n = ros, ros.node
        self.pub = n.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
        self.pred = n.create_publisher(Image, "/planner/predicted_latent", 10)
        self.stops = ros.collect(Bool, "/jepa_wm/stop", LATCHED_QOS)
        self.scores = ros.collect(Image, "/surprise_monitor/score")
        self.observed = ros.collect(Image, "/surprise_monitor/observed_latent")
        self.diags = ros.collect(DiagnosticArray, "/diagnostics")
        self.t0 = 1_000 * 10**9
        self.k = 0
        self.offset = 0.0  # added to every prediction: 0 = a perfect model
        self.rng = np.random.default_rng(0)
        self.answered = 0
        self.frozen = False  # True: the driver re-sends its last picture with new stamps
        self.picture = 0

    def frame(self):
        img = np.full((48, 64, 3), 90, np.uint8)
        self.picture += not self.frozen
        x = 8 + (self.picture % 20) * 2
        img[10:30, x:x + 12] = (200, 40, 40)
        ns = self.t0 + int(self.k * DT * 1e9)
        self.pub.publish(image_msg_from_rgb(img, Time(sec=ns // 10**9, nanosec=ns % 10**9), "camera"))
        self.k += 1

    def answer(self):
        """Predict each newly observed frame from its predecessor's stamp (as the planner would)."""
        while self.answered < len(self.observed):
            msg = self.observed[self.answered][1]
            self.answered += 1
            src = stamp_ns(msg.header.stamp) - int(DT * 1e9)
            z = vector_from_msg(msg) + self.offset
            self.pred.publish(vector_msg(z, stamp=Time(sec=src // 10**9, nanosec=src % 10**9)))

    def run(self, frames, answer=True):
        for _ in range(frames):
            self.frame()
            end = time.monotonic() + DT
            while time.monotonic() < end:
                self.ros.executor.spin_once(timeout_sec=0.01)
                if answer:
                    self.answer()

    def stopped(self):
        return bool(self.stops) and self.stops[-1][1].data

    def reset(self, run=None):
        """Clear the stop the monitor latches at start-up; `run(frames)` keeps the camera live meanwhile."""
        run = run or (lambda frames: self.run(frames, answer=False))
        res = self.ros.reset_monitor(spin=lambda _: run(2))
        assert res.success, res.message
        assert self.ros.spin_until(lambda: not self.stopped(), 3)
        return res


def _start(start_node, ckpt, **over):
    params = {"model": str(ckpt), "startup_grace": 5.0, "camera_timeout": 0.8, "score_only_in_autonomy": False}
    params.update(over)
    mon = start_node("surprise_monitor", "monitor.yaml", params)
    assert mon.wait_output("monitor up", 60), mon.output
    return mon


def test_injected_surprise_latches_within_two_frames_until_reset(ros, start_node, tiny_checkpoint):
    mon = _start(start_node, tiny_checkpoint)
    cam = Camera(ros)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    cam.reset()
    cam.run(12)
    assert cam.scores, f"nominal predictions are scored\n{mon.output}"
    assert not cam.stopped(), f"a perfect model does not trip the stop: {[vector_from_msg(m) for _, m in cam.scores]}"
    n_scores = len(cam.scores)
    cam.offset = 1.0  # the world stops doing what the model predicts
    cam.run(4)
    assert cam.stopped(), mon.output
    injected = [vector_from_msg(m) for _, m in cam.scores[n_scores:]]
    tripped_at = next(i for i, s in enumerate(injected) if s[2] > 0)
    assert tripped_at <= 1, f"tripped at the {tripped_at + 1}th surprising frame: {injected}"
    assert injected[0][0] > injected[0][1], "score above the calibrated threshold"
    # Latched: back to nominal does not clear it.
    cam.offset = 0.0
    cam.run(5)
    assert cam.stopped()
    res = ros.call(Trigger, "/surprise_monitor/reset", Trigger.Request())
    assert res.success, res.message
    assert ros.spin_until(lambda: not cam.stopped(), 3)
    cam.run(5)
    assert not cam.stopped()
    assert any(s.level == DiagnosticStatus.ERROR and "protective stop: surprise" in s.message
               for _, d in cam.diags for s in d.status)
    assert mon.wait_output("PROTECTIVE STOP latched: surprise", 3), mon.output


def test_predictions_made_before_autonomy_began_are_not_scored(ros, start_node, tiny_checkpoint):
    # The planner predicts from every frame, but after a frame taken while the gate held the arm,
    # the next command was the hold, not the plan: a wrong prediction there is not a surprise.
    mon = _start(start_node, tiny_checkpoint, score_only_in_autonomy=True, prediction_timeout=0.0, camera_timeout=5.0)
    cam = Camera(ros)
    gate = ros.node.create_publisher(String, "/command_gate/state", LATCHED_QOS)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    cam.reset()  # before the gate engages: a reset of a latched stop closes the scoring window
    cam.offset = 1.0
    cam.run(5, answer=False)
    gate.publish(String(data=json.dumps({"mode": "autonomy"})))
    ros.spin_until(lambda: False, 0.5)
    cam.answer()  # late predictions for frames from before autonomy
    ros.spin_until(lambda: False, 0.5)
    assert not cam.stopped() and not cam.scores, mon.output
    cam.run(4)  # predictions from frames taken under autonomy are scored
    assert cam.stopped(), mon.output


def test_silent_camera_latches_and_reset_needs_a_live_camera(ros, start_node, tiny_checkpoint):
    mon = _start(start_node, tiny_checkpoint)
    cam = Camera(ros)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    cam.reset()
    cam.run(8)
    assert not cam.stopped()
    t_last = time.monotonic()
    assert ros.spin_until(cam.stopped, 3.0), mon.output
    assert time.monotonic() - t_last < 0.8 + 0.5
    assert mon.wait_output("silent for more than", 3), mon.output
    res = ros.call(Trigger, "/surprise_monitor/reset", Trigger.Request())
    assert not res.success and "not live" in res.message
    cam.run(3)
    assert ros.call(Trigger, "/surprise_monitor/reset", Trigger.Request()).success


def test_a_camera_repeating_its_frame_while_the_arm_moves_latches_a_stop(ros, start_node, tiny_checkpoint):
    mon = _start(start_node, tiny_checkpoint, camera_timeout=5.0)
    cam = Camera(ros)
    joints = ros.node.create_publisher(JointState, "/joint_states", 10)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/joint_states") > 0, 15), mon.output
    cam.reset()
    q = 0.0

    def run(frames, speed):
        nonlocal q
        for _ in range(frames):
            q += speed
            joints.publish(JointState(name=["shoulder", "elbow"], position=[q, 0.5]))
            ros.spin_for(0.02)
            cam.run(1, answer=False)

    run(5, 0.05)  # a live camera watching the arm move
    cam.frozen = True
    run(5, 0.0)  # a still scene: the same picture again is what a rendered camera sends
    assert not cam.stopped(), mon.output
    run(3, 0.015)  # the picture stays while the arm moves on: stopped once it has moved over 0.02 rad
    assert ros.spin_until(cam.stopped, 2), mon.output
    assert mon.wait_output("repeated a frame while the joints moved", 3), mon.output
    # Over 0.02 rad; a joint state that reaches the monitor after its frame may add one 0.015 step.
    moved = float(re.search(r"joints moved ([0-9.]+) rad", mon.output).group(1))
    assert 0.02 < moved <= 0.046, mon.output


def test_malformed_frames_are_reported_and_the_monitor_survives(ros, start_node, tiny_checkpoint):
    mon = _start(start_node, tiny_checkpoint)
    cam = Camera(ros)
    # Good frames first: once one comes back encoded, the best-effort camera link is matched both ways
    # (a graph count alone can precede that, and the first bad frame would be lost).
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    for _ in range(50):
        cam.run(1)
        if cam.observed:
            break
    assert cam.observed, mon.output
    wrong_encoding = image_msg_from_rgb(np.zeros((32, 32, 3), np.uint8))
    wrong_encoding.encoding = "xyz42"
    truncated = image_msg_from_rgb(np.zeros((32, 32, 3), np.uint8))
    truncated.data = bytes(truncated.data)[:100]
    wrong_size = image_msg_from_rgb(np.zeros((32, 32, 3), np.uint8))
    wrong_size.height = 64
    odd_yuv = Image(encoding="yuv422", height=2, width=3, step=6, data=bytes(12))  # OpenCV raises cv2.error on it
    for msg in (wrong_encoding, truncated, wrong_size, odd_yuv):
        cam.pub.publish(msg)
        ros.spin_for(0.15)
    before = len(cam.observed)
    cam.run(5)
    assert mon.alive(), mon.output
    assert mon.wait_output("dropping camera frame", 3), mon.output
    assert "xyz42" in mon.output, "the log names the problem"
    assert len(cam.observed) >= before + 4, "good frames after bad ones are still encoded"
    assert ros.spin_until(lambda: any(
        kv.key == "malformed_frames" and int(kv.value) >= 4 for _, d in cam.diags for s in d.status for kv in s.values), 3)


def test_the_frozen_frame_check_sees_the_arm_when_a_gripper_publishes_joint_states_too(ros, start_node, tiny_checkpoint):
    # Arm and gripper drivers publish /joint_states separately; the gripper's message (with no position
    # reading) must not hide the arm's joints from the check.
    mon = _start(start_node, tiny_checkpoint, camera_timeout=5.0)
    cam = Camera(ros)
    arm = ros.node.create_publisher(JointState, "/joint_states", 10)
    gripper = ros.node.create_publisher(JointState, "/joint_states", 10)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/joint_states") > 0, 15), mon.output
    cam.reset()
    q = 0.0
    for k in range(14):
        cam.frozen = k >= 4  # a live camera first, then one picture while the arm moves on
        q += 0.01
        arm.publish(JointState(name=["shoulder", "elbow"], position=[q, 0.5]))
        ros.spin_for(0.02)
        gripper.publish(JointState(name=["gripper"], position=[float("nan")]))
        ros.spin_for(0.02)
        cam.run(1, answer=False)
        if cam.stopped():
            break
    assert ros.spin_until(cam.stopped, 2), mon.output
    assert mon.wait_output("repeated a frame while the joints moved", 3), mon.output


def test_the_stop_topic_is_republished_as_a_heartbeat_and_stays_latched(ros, start_node, tiny_checkpoint):
    # The gate takes a quiet stop topic for a dead monitor, so the state comes at 20 Hz, not only on changes.
    mon = _start(start_node, tiny_checkpoint, startup_grace=1.0)
    cam = Camera(ros)
    assert ros.spin_until(lambda: cam.stops, 10), mon.output
    n = len(cam.stops)
    ros.spin_for(1.0)
    assert len(cam.stops) - n >= 10, f"{len(cam.stops) - n} messages in 1 s while latched"
    # No camera at all: latched from start-up, and after startup_grace the silent camera is the stop's reason.
    assert mon.wait_output("PROTECTIVE STOP latched: camera '/camera/image_raw' silent for more than 1.0 s", 3), mon.output
    ros.spin_for(0.5)
    assert all(m.data for _, m in cam.stops), "once latched, only ~/reset clears it"


def test_a_started_or_restarted_monitor_latches_and_only_reset_lets_the_gate_move(ros, start_node, tiny_checkpoint):
    # A monitor's first word is `true`: a `false` at start-up would clear the stop a killed predecessor latched
    # while its cause may still be there. The gate (a real one) forwards nothing, teleop included, until ~/reset.
    joints = ["base_yaw", "shoulder", "elbow"]
    gate = start_node("command_gate", "gate.yaml", {"joint_names": joints})
    # The start-up latch, not a camera missing at start-up, is what stops the gate here; and a slow service call
    # on a busy machine must not look like a silent camera.
    timing = {"startup_grace": 60.0, "camera_timeout": 3.0}
    mon = _start(start_node, tiny_checkpoint, **timing)
    cam = Camera(ros)
    js = ros.node.create_publisher(JointState, "/joint_states", 10)
    ros.node.create_timer(0.05, lambda: js.publish(JointState(name=joints, position=[0.1, -0.2, 0.3])))
    teleop = ros.node.create_publisher(JointTrajectory, "/command_gate/teleop/joint_trajectory", 10)
    states = ros.collect(String, "/command_gate/state", LATCHED_QOS)
    out = ros.collect(JointTrajectory, "/arm_controller/joint_trajectory")
    mode = lambda: json.loads(states[-1][1].data)["mode"] if states else None  # noqa: E731
    engage = lambda: ros.call(SetBool, "/command_gate/engage", SetBool.Request(data=True))  # noqa: E731
    assert gate.wait_output("gate up", 60), gate.output

    def latched_and_held(monitor, seconds=2.0):
        """The monitor says `true` and nothing else; the gate stays stopped, refuses to engage, drops teleop."""
        assert monitor.wait_output("PROTECTIVE STOP latched: monitor started: call ~/reset once the camera is live", 3)
        n_stops, n_states, n_out = len(cam.stops), len(states), len(out)
        pt = JointTrajectoryPoint(positions=[0.4, 0.0, 0.0])
        pt.time_from_start.nanosec = 100_000_000
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            teleop.publish(JointTrajectory(joint_names=joints, points=[pt]))
            cam.run(1, answer=False)  # a live camera does not clear it either
        assert len(cam.stops) - n_stops >= 10 and all(m.data for _, m in cam.stops[n_stops:]), monitor.output
        assert all(json.loads(m.data)["mode"] == "stopped" for _, m in states[n_states:]) and mode() == "stopped", (
            f"{[json.loads(m.data) for _, m in states[n_states:]]}\n{gate.output}")
        assert not any(list(m.points[0].positions) == [0.4, 0.0, 0.0] for _, m in out[n_out:] if m.points), "teleop forwarded"
        cam.run(6, answer=False)  # teleop_timeout: teleop must not be what refuses the engage
        assert not engage().success

    # A fresh start: latched, with the reason in the log and in /diagnostics.
    assert ros.spin_until(lambda: mode() == "stopped", 15), f"{gate.output}\n{mon.output}"
    assert ros.spin_until(lambda: any("protective stop: monitor started" in s.message
                                      for _, d in cam.diags for s in d.status), 3), mon.output
    latched_and_held(mon)
    cam.reset()
    assert ros.spin_until(lambda: mode() not in (None, "stopped"), 3), gate.output

    # A stop latches (here the camera goes silent), the monitor is killed and restarted: the new one keeps it.
    assert ros.spin_until(lambda: mode() == "stopped", 10), mon.output
    mon.proc.kill()
    mon.proc.wait(timeout=10)
    mon = _start(start_node, tiny_checkpoint, **timing)
    latched_and_held(mon)
    cam.reset()
    assert ros.spin_until(lambda: mode() not in (None, "stopped"), 3), gate.output
    res = engage()
    assert res.success, res.message


def test_scoring_resumes_after_the_sim_clock_restarts(ros, start_node, tiny_checkpoint):
    # /sim/reset starts /clock again at 0: what the monitor keyed by the old stamps must not keep every newer
    # prediction from being scored.
    from rosgraph_msgs.msg import Clock

    mon = _start(start_node, tiny_checkpoint, use_sim_time=True, score_only_in_autonomy=True, camera_timeout=5.0)
    cam = Camera(ros)
    clock = ros.node.create_publisher(Clock, "/clock", 10)
    gate = ros.node.create_publisher(String, "/command_gate/state", LATCHED_QOS)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)

    def run(frames):
        for _ in range(frames):
            ns = cam.t0 + int(cam.k * DT * 1e9)
            clock.publish(Clock(clock=Time(sec=ns // 10**9, nanosec=ns % 10**9)))
            cam.run(1)

    cam.t0 = 10**9
    cam.reset(run)
    gate.publish(String(data=json.dumps({"mode": "autonomy", "engaged": True})))
    run(6)
    assert cam.scores and not cam.stopped(), mon.output
    cam.t0, cam.k, cam.offset = 2 * 10**8, 0, 1.0  # the clock restarts behind, the world now surprises
    run(8)
    assert cam.stopped(), mon.output
    assert mon.wait_output("PROTECTIVE STOP latched: surprise", 3), mon.output


def test_the_start_up_grace_begins_with_the_sim_clock(ros, start_node, tiny_checkpoint):
    # Under sim time the node starts at time 0; a simulator already at 500 s is not 500 s of camera silence. The
    # monitor is latched from start-up anyway, but a silent camera would become the stop's reason.
    from rosgraph_msgs.msg import Clock

    mon = _start(start_node, tiny_checkpoint, use_sim_time=True, startup_grace=5.0)
    clock = ros.node.create_publisher(Clock, "/clock", 10)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/clock") > 0, 15)
    for k in range(30):  # 1.5 s of sim time from 500 s, no camera frame yet
        clock.publish(Clock(clock=Time(sec=500, nanosec=k * 50_000_000)))
        ros.spin_for(0.05)
    ros.spin_for(0.5)  # the monitor's log catches up
    assert "silent" not in mon.output, mon.output


def test_a_planner_slower_than_the_gate_is_still_scored(ros, start_node, tiny_checkpoint):
    # Plans take 0.4 s, longer than the gate's autonomy_timeout: the engaged gate holds between commands and
    # forwards each late one. Scoring must follow the engagement, not restart at each hold (which would skip
    # every prediction, all made from frames older than the restart).
    mon = _start(start_node, tiny_checkpoint, score_only_in_autonomy=True, camera_timeout=5.0)
    cam = Camera(ros)
    gate = ros.node.create_publisher(String, "/command_gate/state", LATCHED_QOS)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    cam.reset()
    state = lambda mode: gate.publish(String(data=json.dumps({"mode": mode, "engaged": True})))  # noqa: E731
    for k in range(40):
        cam.run(1, answer=False)  # frame k
        if k >= 4 and k % 4 == 0:  # a plan from frame k - 4 arrives: the gate forwards it
            state("autonomy")
            src = cam.t0 + int((k - 4) * DT * 1e9)
            cam.pred.publish(vector_msg(np.full(16, 100.0), stamp=Time(sec=src // 10**9, nanosec=src % 10**9)))
        elif k >= 4 and k % 4 == 3:  # 0.3 s without a command: the gate holds
            state("hold")
        if cam.stopped():
            break
    assert cam.stopped(), mon.output
    assert cam.scores and mon.wait_output("PROTECTIVE STOP latched: surprise", 3), mon.output


def test_a_misspelt_parameter_refuses_to_start_and_names_the_right_one(start_node, tiny_checkpoint):
    mon = start_node("surprise_monitor", "monitor.yaml", {"model": str(tiny_checkpoint), "prediction_timout": 5.0})
    assert mon.proc.wait(timeout=60) == 2, mon.output
    assert "parameter 'prediction_timout' (did you mean 'prediction_timeout'?) is not a parameter" in mon.output, mon.output


@pytest.mark.parametrize("over,needle", [
    ({"model": "/nonexistent/model.safetensors"}, "parameter 'model'"),
    ({"threshold": ".inf"}, "parameter 'threshold' is inf"),  # would never trip
    ({"prediction_timeout": ".inf"}, "parameter 'prediction_timeout' is inf"),
    ({"camera_timeout": 0.0}, "parameter 'camera_timeout'"),
    ({"prediction_dt": 0.2}, "parameter 'prediction_dt'"),  # the checkpoint predicts 0.1 s steps
    ({"image_transport": "theora"}, "parameter 'image_transport'"),
    ({"frozen_frame_motion": -0.1}, "parameter 'frozen_frame_motion'"),
])
def test_bad_parameters_refuse_to_start(start_node, tiny_checkpoint, over, needle):
    params = {"model": str(tiny_checkpoint), **over}
    mon = start_node("surprise_monitor", "monitor.yaml", params)
    assert mon.proc.wait(timeout=60) == 2, mon.output
    assert needle in mon.output and "refusing to start" in mon.output, mon.output


def test_a_whitening_matrix_that_does_not_fit_the_latent_refuses_to_start(start_node, tiny_checkpoint, tmp_path):
    from jepa_wm.core.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    meta["surprise"]["whitening"] = np.eye(5).tolist()  # the tiny latent has 16 dimensions
    bad = save_checkpoint(tmp_path / "bad.safetensors", model, meta)
    mon = start_node("surprise_monitor", "monitor.yaml", {"model": str(bad)})
    assert mon.proc.wait(timeout=60) == 2, mon.output
    assert "whitening matrix of shape (5, 5) for a 16-dim latent" in mon.output, mon.output


def test_a_camera_too_slow_for_the_step_is_named_in_the_log_and_the_stop(ros, start_node, tiny_checkpoint):
    # Frames 0.2 s apart, predictions 0.1 s ahead: none can be scored. The prediction watchdog's stop must say why,
    # not send the operator after the planner.
    mon = _start(start_node, tiny_checkpoint, score_only_in_autonomy=True, camera_timeout=5.0)
    cam = Camera(ros)
    gate = ros.node.create_publisher(String, "/command_gate/state", LATCHED_QOS)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") > 0, 15)
    cam.reset()
    gate.publish(String(data=json.dumps({"mode": "autonomy", "engaged": True})))
    for _ in range(40):
        src = cam.t0 + int(cam.k * DT * 1e9)
        cam.run(1, answer=False)
        cam.k += 1  # every other stamp: a 5 Hz camera
        cam.pred.publish(vector_msg(np.zeros(16), stamp=Time(sec=src // 10**9, nanosec=src % 10**9)))
        if cam.stopped():
            break
    assert cam.stopped(), mon.output
    why = "camera frames come every 0.200 s (median)"
    assert mon.wait_output(why, 3) and mon.wait_output(f"PROTECTIVE STOP latched: no prediction on "
                                                       f"'/planner/predicted_latent' scored for 1.0 s of autonomy: "
                                                       f"{why}", 3), mon.output
