"""The planner as a real process: commands a controller can execute, stamped latents, bad frames, parameters."""

import io
import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for node tests")
pytest.importorskip("jepa_wm.data.images", reason="jepa_wm.data.images (camera frame decoding) is not in this checkout")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from jepa_wm.nodes.common import LATCHED_QOS, SENSOR_QOS, image_msg_from_rgb, stamp_ns, vector_from_msg  # noqa: E402

JOINTS = ["base_yaw", "shoulder", "elbow"]


def scene(k):
    img = np.full((64, 64, 3), 60, np.uint8)
    img[20:40, 10 + k % 30:22 + k % 30] = (30, 200, 90)
    return img


class Rig:
    def __init__(self, ros):
        self.ros, n = ros, ros.node
        self.cam = n.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
        self.cam_c = n.create_publisher(CompressedImage, "/camera/image_raw/compressed", SENSOR_QOS)
        js = n.create_publisher(JointState, "/joint_states", 10)
        n.create_timer(0.05, lambda: js.publish(JointState(name=JOINTS, position=[0.0, 0.1, -0.1])))
        self.traj = ros.collect(JointTrajectory, "/command_gate/autonomy/joint_trajectory")
        self.arr = ros.collect(Float64MultiArray, "/command_gate/autonomy/commands")
        self.pred = ros.collect(Image, "/planner/predicted_latent")
        self.obs = ros.collect(Image, "/planner/observed_latent")
        self.debug = ros.collect(Image, "/planner/debug_image")
        self.k = 0
        self.stamps = []

    def frame(self, msg=None):
        ns = (500 + self.k) * 10**9
        if msg is None:
            msg = image_msg_from_rgb(scene(self.k))
        msg.header.stamp = Time(sec=ns // 10**9, nanosec=0)
        (self.cam_c if isinstance(msg, CompressedImage) else self.cam).publish(msg)
        self.stamps.append(ns)
        self.k += 1
        self.ros.spin_for(0.15)


def _up(ros, start_node, ckpt, **over):
    node = start_node("planner", "planner.yaml", {"model": str(ckpt), **over})
    assert node.wait_output("active", 60), node.output
    rig = Rig(ros)
    camera = "/camera/image_raw" + ("/compressed" if over.get("image_transport") == "compressed" else "")
    assert ros.spin_until(lambda: ros.node.count_subscribers(camera) > 0, 15)
    return node, rig


def test_plans_executable_trajectories_with_stamped_latents(ros, start_node, tiny_checkpoint):
    node, rig = _up(ros, start_node, tiny_checkpoint, horizon=3)  # a multi-point trajectory (the shipped horizon is 1)
    assert ros.node.count_subscribers("/camera/image_raw/compressed") == 0  # image_transport: raw
    rig.frame()
    res = ros.call(Trigger, "/planner/capture_goal", Trigger.Request())
    assert res.success, res.message
    # Every raw encoding a camera may send: rgb8, bgr8, mono8.
    bgr = image_msg_from_rgb(scene(50)[..., ::-1].copy())
    bgr.encoding = "bgr8"
    mono = Image(height=64, width=64, encoding="mono8", step=64, data=scene(3)[..., 1].tobytes())
    for msg in (None, bgr, None, mono, None, None, None):
        rig.frame(msg)
    assert ros.spin_until(lambda: len(rig.traj) >= 5, 10), node.output
    for _, t in rig.traj:
        assert list(t.joint_names) == JOINTS
        assert stamp_ns(t.header.stamp) > 0
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in t.points]
        assert len(times) == 3 and all(b > a for a, b in zip(times, times[1:])), times
        pos = np.array([p.positions for p in t.points])
        assert pos.shape == (3, 3) and np.all(pos >= -1.5) and np.all(pos <= 1.5), pos
    # Latents carry the stamp of the camera frame they come from.
    pred_stamps = {stamp_ns(m.header.stamp) for _, m in rig.pred}
    assert pred_stamps and pred_stamps <= set(rig.stamps)
    z = vector_from_msg(rig.obs[-1][1])
    assert z.shape == (16,) and np.all(np.isfinite(z))
    dbg = rig.debug[-1][1] if rig.debug else None
    assert dbg is not None and dbg.encoding == "rgb8" and dbg.width == 2 * 96, "debug image: current | goal side by side"
    assert node.alive()


def test_malformed_frames_are_logged_and_dropped(ros, start_node, tiny_checkpoint):
    node, rig = _up(ros, start_node, tiny_checkpoint)
    rig.frame()
    assert ros.call(Trigger, "/planner/capture_goal", Trigger.Request()).success
    rig.frame(Image(encoding="yuv422", height=2, width=3, step=6, data=bytes(12)))  # OpenCV raises cv2.error on it
    assert node.wait_output("dropping frame: yuv422 image has odd width 3", 5), node.output
    truncated = image_msg_from_rgb(scene(1))
    truncated.data = bytes(truncated.data)[:1000]
    rig.frame(truncated)  # dropped too (its log line is throttled)
    n = len(rig.traj)
    rig.frame()
    rig.frame()
    assert ros.spin_until(lambda: len(rig.traj) > n, 5), node.output
    assert node.alive()


def test_a_gate_state_that_is_no_json_object_is_ignored(ros, start_node, tiny_checkpoint):
    node, rig = _up(ros, start_node, tiny_checkpoint)
    gate = ros.node.create_publisher(String, "/command_gate/state", LATCHED_QOS)
    assert ros.spin_until(lambda: gate.get_subscription_count() > 0, 10)
    for bad in ("null", "[1, 2]", "not json"):  # someone else's message on the topic
        gate.publish(String(data=bad))
        ros.spin_for(0.3)
    assert node.wait_output("ignoring a gate state on /command_gate/state that is no JSON object: 'null'", 5), node.output
    gate.publish(String(data=json.dumps({"mode": "hold", "engaged": True, "stopped": False})))
    assert node.wait_output("gate engaged autonomy", 5), node.output  # and still follows the gate
    assert node.alive()


def test_a_rejected_goal_image_is_said_every_time_and_keeps_the_goal(ros, start_node, tiny_checkpoint):
    node, rig = _up(ros, start_node, tiny_checkpoint)
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    rig.frame()
    assert ros.call(Trigger, "/planner/capture_goal", Trigger.Request()).success
    goal = ros.node.create_publisher(Image, "/planner/goal_image", LATCHED_QOS)
    assert ros.spin_until(lambda: goal.get_subscription_count() > 0, 10)
    truncated = image_msg_from_rgb(scene(5))
    truncated.data = bytes(truncated.data)[:1000]
    rejected = "goal image on /planner/goal_image rejected: "
    # Two in a row: a throttled log line (the camera's "dropping frame") would say nothing of the second.
    for k, bad in enumerate((Image(encoding="yuv422", height=2, width=3, step=6, data=bytes(12)), truncated)):
        goal.publish(bad)
        assert ros.spin_until(lambda: node.output.count(rejected) > k, 5), node.output
    assert rejected + "yuv422 image has odd width 3" in node.output and "; goal unchanged" in node.output, node.output
    assert "dropping frame" not in node.output
    n = len(rig.traj)
    for _ in range(3):
        rig.frame()
    assert ros.spin_until(lambda: len(rig.traj) > n, 10), "still planning towards the captured goal"

    def rejected_count():
        values = [dict((kv.key, kv.value) for kv in s.values) for _, m in diags for s in m.status
                  if s.name == "jepa_wm: planner"]
        return values[-1].get("goal_images_rejected") if values else None

    assert ros.spin_until(lambda: rejected_count() == "2", 3), rejected_count()
    assert node.alive()


def test_trajectories_carry_the_stamp_of_the_frame_they_were_planned_from(ros, start_node, tiny_checkpoint):
    # The gate drops plans whose frame is older than its autonomy_max_age: a slow plan must not look fresh.
    node, rig = _up(ros, start_node, tiny_checkpoint)
    rig.frame()
    assert ros.call(Trigger, "/planner/capture_goal", Trigger.Request()).success
    for _ in range(4):
        rig.frame()  # stamped 500 s + k: long before now
    assert ros.spin_until(lambda: len(rig.traj) >= 2, 10), node.output
    ros.spin_for(0.3)  # each prediction follows its command
    predicted = {stamp_ns(m.header.stamp) for _, m in rig.pred}
    for _, t in rig.traj:
        assert stamp_ns(t.header.stamp) in rig.stamps, f"stamp {stamp_ns(t.header.stamp)} is no camera frame's"
        assert stamp_ns(t.header.stamp) in predicted, "the command and its prediction come from the same frame"


def png(k):
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(scene(k)).save(buf, format="PNG")
    return CompressedImage(format="png", data=buf.getvalue())


def test_forward_command_output_from_a_compressed_camera(ros, start_node, tiny_checkpoint):
    node, rig = _up(ros, start_node, tiny_checkpoint, output_type="forward_command", image_transport="compressed")
    # One transport only: a driver compresses while someone listens, and both would decode each frame twice.
    assert ros.node.count_subscribers("/camera/image_raw") == 0
    rig.frame(png(0))
    assert ros.call(Trigger, "/planner/capture_goal", Trigger.Request()).success
    for k in range(1, 5):
        rig.frame(png(k))
    assert ros.spin_until(lambda: len(rig.arr) >= 2, 10), node.output
    assert all(len(m.data) == 3 for _, m in rig.arr)


def test_cleanup_and_configure_again_leave_one_of_everything(ros, start_node, tiny_checkpoint):
    """A lifecycle manager may clean up and configure again: no second control timer, topic or service."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    node, rig = _up(ros, start_node, tiny_checkpoint)
    for t in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
        assert ros.call(ChangeState, "/planner/change_state", ChangeState.Request(transition=Transition(id=t))).success
    assert ros.spin_until(lambda: ros.node.count_publishers("/command_gate/autonomy/joint_trajectory") == 0, 5)
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") == 0, 5)
    for t in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert ros.call(ChangeState, "/planner/change_state", ChangeState.Request(transition=Transition(id=t))).success
    assert ros.spin_until(lambda: ros.node.count_subscribers("/camera/image_raw") == 1, 5)
    ros.spin_for(0.5)
    assert ros.node.count_publishers("/command_gate/autonomy/joint_trajectory") == 1
    assert ros.node.count_subscribers("/camera/image_raw") == 1
    rig.frame()
    assert ros.call(Trigger, "/planner/capture_goal", Trigger.Request()).success
    n = len(rig.traj)
    for _ in range(3):
        rig.frame()
    assert ros.spin_until(lambda: len(rig.traj) > n, 10), node.output
    assert node.alive()


@pytest.mark.parametrize("over,needle", [
    ({"model": "/nonexistent/model.safetensors"}, "parameter 'model'"),
    ({"joint_names": ["a", "b", "c"]}, "parameter 'joint_names'"),
    ({"elites": 1000}, "parameter 'elites'"),
    ({"output_type": "velocity"}, "parameter 'output_type'"),
    ({"control_period": 0.05}, "parameter 'control_period'"),
    ({"image_transport": "theora"}, "parameter 'image_transport'"),  # the checkpoint predicts 0.1 s steps
    ({"joint_names": []}, "parameter 'joint_names' is empty"),  # set, to []: not "required and was not set"
])
def test_bad_parameters_refuse_to_start(start_node, tiny_checkpoint, over, needle):
    node = start_node("planner", "planner.yaml", {"model": str(tiny_checkpoint), **over})
    assert node.proc.wait(timeout=60) == 2, node.output
    assert needle in node.output and "refusing to start" in node.output, node.output
    assert node.output.count(needle) == 1, f"said once (also when configure finds it): {node.output}"


def test_a_model_of_joint_state_deltas_refuses_to_start(start_node, tiny_checkpoint, tmp_path):
    from jepa_wm.core.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    delta = save_checkpoint(tmp_path / "delta.safetensors", model, {**meta, "data": {"action_type": "delta"}})
    node = start_node("planner", "planner.yaml", {"model": str(delta)})
    assert node.proc.wait(timeout=60) == 2, node.output
    assert "trained with data.action_type 'delta'" in node.output and "refusing to start" in node.output, node.output


# ---------------------------------------------------------------- in-process: history, engage, backend selection


@pytest.fixture
def planner_in_process(ros, request):
    """A Planner in this process (torch backend unless overridden), its published commands recorded."""
    from rclpy.parameter import Parameter

    from jepa_wm.nodes.planner import Planner

    nodes = []

    def make(model, **over):
        params = {"model": str(model), "joint_names": JOINTS, "backends": ["torch"], "debug_image": False,
                  "samples": 16, "iterations": 2, **over}
        node = Planner(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        nodes.append(node)
        node.sent = []
        node.trigger_configure()
        node.trigger_activate()
        node._publish_command = lambda targets, header: node.sent.append(targets[0].copy())
        node._set_goal(scene(17), "test")
        return node

    yield make
    for n in nodes:
        n.destroy_node()


def _frame(node, k):
    node._on_image(image_msg_from_rgb(scene(k)))
    node._step()


def test_plans_only_from_a_full_history_and_refills_it_after_reactivate(planner_in_process, tiny_checkpoint):
    node = planner_in_process(tiny_checkpoint)
    H = node.model.cfg.history
    for k in range(H - 1):  # the first H-1 frames only fill the history (an ONNX rollout takes exactly H)
        _frame(node, k)
    assert node.sent == [] and "filling" in node.status
    _frame(node, H)
    assert len(node.sent) == 1 and node.status.startswith("planning")
    old = [h[0] for h in node.history]  # kept alive, so no new latent can be one of them
    node.trigger_deactivate()
    node.trigger_activate()
    _frame(node, 40)  # minutes later: the pre-pause latents are not one control step before this frame
    assert not any(h[0] is o for h in node.history for o in old) and len(node.history) == 1
    assert len(node.sent) == 1


def test_the_first_command_after_engage_is_rate_limited_from_the_measured_position(planner_in_process):
    import json

    from std_msgs.msg import String

    node = planner_in_process("models/sim.safetensors", samples=64, iterations=8)
    max_step = 0.15  # the checkpoint's action_max_step
    q0 = np.array([0.0, -0.5, 1.0])
    node._on_joint_states(JointState(name=JOINTS, position=q0.tolist()))
    node._on_gate_state(String(data=json.dumps({"mode": "hold", "engaged": False, "stopped": False})))
    for k in range(6):
        if k == 4:  # engaged, but the gate has forwarded nothing yet: the plans so far were never executed
            node._on_gate_state(String(data=json.dumps({"mode": "hold", "engaged": True, "stopped": False})))
        _frame(node, k)
        if k >= node.model.cfg.history - 1:  # before that, the frames only fill the history
            assert np.abs(node.sent[-1] - q0).max() <= max_step + 1e-4, (k, node.sent[-1] - q0)
    assert len(node.sent) == 6 - node.model.cfg.history + 1
    node._on_gate_state(String(data=json.dumps({"mode": "autonomy", "engaged": True, "stopped": False})))
    _frame(node, 6)  # sent while forwarding: the next one may step on from it
    _frame(node, 7)
    assert np.abs(node.sent[-1] - q0).max() > max_step + 1e-4


def test_an_onnx_export_is_used_only_for_its_checkpoint_and_horizon(planner_in_process, tiny_checkpoint, tmp_path):
    from jepa_wm.backends.onnx_export import export_onnx
    from jepa_wm.core.checkpoint import load_checkpoint

    model = load_checkpoint(str(tiny_checkpoint))[0]
    export_onnx(model, tmp_path / "h1", horizon=1, checkpoint=tiny_checkpoint)
    export_onnx(model, tmp_path / "h5", horizon=5, checkpoint=tiny_checkpoint)
    export_onnx(model, tmp_path / "unknown", horizon=1)  # from which checkpoint? not recorded
    node = planner_in_process(tiny_checkpoint, backends=["onnxruntime", "torch"], onnx_dir=str(tmp_path / "h1"))
    assert node.backend == "onnxruntime"
    for k in range(model.cfg.history + 1):
        _frame(node, k)
    assert len(node.sent) == 2 and node.status.startswith("planning"), node.status
    for d in ("h5", "unknown"):
        node = planner_in_process(tiny_checkpoint, backends=["onnxruntime", "torch"], onnx_dir=str(tmp_path / d))
        assert node.backend == "torch"


def test_a_truncated_export_falls_back_to_torch_and_the_log_says_why(planner_in_process, tiny_checkpoint, tmp_path,
                                                                      capfd):
    from jepa_wm.backends.onnx_export import export_onnx
    from jepa_wm.core.checkpoint import load_checkpoint

    export_onnx(load_checkpoint(str(tiny_checkpoint))[0], tmp_path, horizon=1, checkpoint=tiny_checkpoint)
    rollout = tmp_path / "rollout.onnx"
    rollout.write_bytes(rollout.read_bytes()[:1000])  # a copy cut short
    node = planner_in_process(tiny_checkpoint, backends=["onnxruntime", "torch"], onnx_dir=str(tmp_path))
    assert node.backend == "torch"
    log = capfd.readouterr().err
    assert "inference backend: torch" in log and f"skipped onnxruntime unavailable: {rollout}" in log, log
