"""The simulator node as a real process: camera + joint states out, controller-like commands in, perturbations."""

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for node tests")
pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")
pytest.importorskip("jepa_wm.sim.arm", reason="jepa_wm.sim.arm (the embedded simulator) is not in this checkout")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from jepa_wm.nodes.common import SENSOR_QOS, rgb_from_image, stamp_msg, stamp_ns  # noqa: E402


def _up(ros, start_node, **over):
    sim = start_node("sim", "sim.yaml", over)
    assert sim.wait_output("sim up", 60), sim.output
    images = ros.collect(Image, "/camera/image_raw", SENSOR_QOS)
    infos = ros.collect(CameraInfo, "/camera/camera_info")
    states = ros.collect(JointState, "/joint_states")
    poses = ros.collect(PoseStamped, "/object_pose")
    assert ros.spin_until(lambda: len(images) >= 3 and len(states) >= 3 and infos and poses, 15), sim.output
    # The builtin camera's intrinsics (fovy 68 degrees at 64 px: f = 32 / tan(34 deg)), so a tool that projects
    # with CameraInfo sees what the image shows.
    np.testing.assert_allclose(infos[-1][1].k, [47.44, 0, 32, 0, 47.44, 32, 0, 0, 1], atol=0.01)
    return sim, images, states, poses


def test_publishes_camera_and_joint_states_and_follows_commands(ros, start_node):
    sim, images, states, _ = _up(ros, start_node)
    img = images[-1][1]
    assert (img.height, img.width, img.encoding) == (64, 64, "rgb8")
    assert rgb_from_image(img).shape == (64, 64, 3)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in images[-3:]]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    names = list(states[-1][1].name)
    start = np.array(states[-1][1].position)
    # forward_command style: absolute targets, held.
    target = np.clip(start + 0.3, -1.0, 1.0)
    cmd = ros.node.create_publisher(Float64MultiArray, "/arm_controller/commands", 10)
    ros.spin_until(lambda: ros.node.count_subscribers("/arm_controller/commands") > 0, 5)
    cmd.publish(Float64MultiArray(data=target.tolist()))
    ros.spin_for(3.0)
    reached = np.array(states[-1][1].position)
    assert np.abs(reached - target).max() < np.abs(start - target).max(), (start, target, reached)
    # joint_trajectory style, joints in another order.
    traj = ros.node.create_publisher(JointTrajectory, "/arm_controller/joint_trajectory", 10)
    ros.spin_until(lambda: ros.node.count_subscribers("/arm_controller/joint_trajectory") > 0, 5)
    goal = np.clip(start - 0.3, -1.0, 1.0)
    pt = JointTrajectoryPoint(positions=goal[::-1].tolist())
    pt.time_from_start.nanosec = 100_000_000
    traj.publish(JointTrajectory(joint_names=names[::-1], points=[pt]))
    ros.spin_for(3.0)
    now = np.array(states[-1][1].position)
    assert np.abs(now - goal).max() < np.abs(reached - goal).max(), (reached, goal, now)
    assert sim.alive()


def test_perturbation_services(ros, start_node):
    sim, images, _, poses = _up(ros, start_node)
    before = rgb_from_image(images[-1][1]).astype(int)
    p = poses[-1][1].pose.position
    assert poses[-1][1].header.frame_id == "world"
    res = ros.call(Trigger, "/sim/teleport_object", Trigger.Request())
    assert res.success and "teleported" in res.message
    n = len(images)
    ros.spin_until(lambda: len(images) > n + 2, 3)
    after = rgb_from_image(images[-1][1]).astype(int)
    assert np.abs(after - before).sum() > 0, "the camera sees the object move"
    q = poses[-1][1].pose.position
    assert np.hypot(q.x - p.x, q.y - p.y) == pytest.approx(0.15, abs=0.02)  # teleport_distance, and so does its pose
    assert ros.call(SetBool, "/sim/occlude_camera", SetBool.Request(data=True)).success
    assert ros.call(SetBool, "/sim/block_joint", SetBool.Request(data=True)).success
    assert ros.call(Trigger, "/sim/reset", Trigger.Request()).success
    assert sim.alive()


@pytest.mark.parametrize("overrides,needle", [
    ({"image_encoding": "yuv422"}, "parameter 'image_encoding'"),
    ({"teleport_xy": [5.0, 5.0]}, "parameter 'teleport_xy' is [5.0, 5.0], off the table"),
    ({"teleport_distance": -1.0}, "parameter 'teleport_distance' is -1.0; it must be a jump length > 0 m"),
    ({"teleport_distanse": 0.2}, "(did you mean 'teleport_distance'?) is not a parameter"),
])
def test_bad_parameters_refuse_to_start(start_node, overrides, needle):
    sim = start_node("sim", "sim.yaml", overrides)
    assert sim.proc.wait(timeout=60) == 2
    assert needle in sim.output and "refusing to start" in sim.output, sim.output
    assert "sim up" not in sim.output, "refused before it published a frame and said it was up"


def test_perturbation_parameters_are_checked_when_set(ros, start_node):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    sim, _, _, poses = _up(ros, start_node)

    def set_parameter(name, value):
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return ros.call(SetParameters, "/sim/set_parameters", req).results[0]

    res = set_parameter("teleport_distance", -1.0)
    assert not res.successful and "parameter 'teleport_distance' is -1.0; it must be a jump length > 0 m" in res.reason
    res = set_parameter("teleport_xy", [5.0, 5.0])  # beyond the table (and the floor)
    assert not res.successful and "is [5.0, 5.0], off the table (nothing under it" in res.reason, res.reason
    res = set_parameter("teleport_xy", [0.8, 0.0])  # over the floor, past the table's edge at x 0.65
    assert not res.successful and "off the table (a surface at z -0.450 m under it" in res.reason, res.reason
    res = set_parameter("perturb_joint", 3)
    assert not res.successful and "it must be a joint index 0..2" in res.reason, res.reason
    res = set_parameter("teleport_xy", [0.4, 0.1])
    assert res.successful, res.reason
    assert ros.call(Trigger, "/sim/teleport_object", Trigger.Request()).success
    assert ros.spin_until(lambda: np.hypot(poses[-1][1].pose.position.x - 0.4, poses[-1][1].pose.position.y - 0.1) < 0.01,
                          3), poses[-1][1].pose.position
    # A random jump longer than the table is wide: no direction keeps the object on it.
    assert set_parameter("teleport_xy", []).successful and set_parameter("teleport_distance", 2.0).successful
    res = ros.call(Trigger, "/sim/teleport_object", Trigger.Request())
    assert not res.success and "no direction keeps a 2.0 m jump from" in res.message, res.message
    assert sim.alive()


def test_sim_time_stamps_carry_whole_seconds():
    # 2.9999999999 s rounds to 3 s: splitting seconds from a rounded fraction stamped it 2 s (a second back).
    t = stamp_msg(round(2.9999999999 * 1e9))
    assert (t.sec, t.nanosec) == (3, 0)
    assert stamp_ns(stamp_msg(1_234_567_891)) == 1_234_567_891


def test_with_sim_time_it_drives_a_clock_that_goes_on_across_a_reset(ros, start_node):
    # sim.launch.py use_sim_time:=true: the node's clock is the /clock it publishes. A timer on that clock waited
    # for ever (nothing moved), and a reset sent /clock back to 0 (every node saw time run backwards).
    from rosgraph_msgs.msg import Clock

    clocks = ros.collect(Clock, "/clock")
    sim, _, states, _ = _up(ros, start_node, use_sim_time=True, publish_clock=True)
    assert ros.spin_until(lambda: len(clocks) >= 5, 5), sim.output
    before = stamp_ns(clocks[-1][1].clock)
    ros.call(Trigger, "/sim/reset", Trigger.Request())
    n = len(clocks)
    assert ros.spin_until(lambda: len(clocks) >= n + 3, 5), sim.output
    after = [stamp_ns(m.clock) for _, m in clocks[n - 1:]]
    assert after[0] >= before and all(b > a for a, b in zip(after, after[1:])), (before, after)
    assert stamp_ns(states[-1][1].header.stamp) > before


def test_sigterm_mid_tick_exits_cleanly(start_node):
    # Large frames every 10 ms: the timer's tick is publishing most of the time, so SIGTERM (what `ros2 launch` sends
    # on Ctrl-C) lands in it. Publishing into the shut-down context ended the node with a traceback and exit 1.
    import signal
    import time

    sim = start_node("sim", "sim.yaml", {"width": 320, "height": 240, "control_dt": 0.01})
    assert sim.wait_output("sim up", 60), sim.output
    time.sleep(1.0)
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(timeout=20) == 0, sim.output
    assert "Traceback" not in sim.output, sim.output


def _sim_refusal(ros, **params) -> str:
    """The reason the sim node, built in this process, refuses these parameters."""
    from rclpy.parameter import Parameter

    from jepa_wm.nodes.common import ParameterError
    from jepa_wm.nodes.sim import SimNode

    with pytest.raises(ParameterError) as e:
        SimNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    return str(e.value)


def test_a_scene_setting_the_scene_cannot_take_is_named(ros, tmp_path):
    # Every scene error used to say "parameter 'scene'", whichever setting was wrong.
    from user_robot import write_scene

    scene = str(write_scene(tmp_path / "arm.xml"))
    user = {"scene": scene, "camera": "front_cam", "width": 16, "height": 16}
    for params, needle in [
        ({"camera": "nocam"}, "parameter 'camera' is 'nocam': camera 'nocam' not found in scene"),
        ({**user, "joint_names": ["j_yaw", "elbow"]}, "parameter 'joint_names' is ['j_yaw', 'elbow']: joint 'elbow' not found"),
        ({**user, "object_body": "tray"}, "parameter 'object_body' is 'tray': object body 'tray' not found"),
        ({**user, "ee_site": "gripper"}, "parameter 'ee_site' is 'gripper': end-effector site 'gripper' not found"),
        ({**user, "control_dt": 0.033}, "parameter 'control_dt' is 0.033: control_dt 0.033 s is not a whole number"),
        ({**user, "width": 4096}, "parameter 'width' is 4096: image size 4096x16 does not fit scene"),
        ({**user, "height": 4}, "parameter 'height' is 4; it must be >= 8 pixels"),
        ({"scene": str(tmp_path)}, f"parameter 'scene' is '{tmp_path}': scene {tmp_path} is a directory"),
    ]:
        assert needle in _sim_refusal(ros, **params), params


def test_a_scene_mujoco_cannot_load_is_refused_in_one_line(ros, tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody><body></worldbdy></mujoco>")
    reason = _sim_refusal(ros, scene=str(broken))
    assert reason.startswith(f"parameter 'scene' is '{broken}': MuJoCo cannot load scene") and "\n" not in reason


def test_the_sim_takes_the_end_effector_site_from_its_parameter(ros, tmp_path):
    from rclpy.parameter import Parameter

    from jepa_wm.nodes.sim import SimNode
    from user_robot import write_scene

    params = {"scene": str(write_scene(tmp_path / "arm.xml")), "camera": "front_cam", "width": 16, "height": 16,
              "ee_site": "tip"}
    node = SimNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    tip = node.sim.data.site("tip").xpos
    np.testing.assert_allclose(node.sim.ee_pos(), tip)
    node.destroy_node()


def test_sim_launch_takes_the_sim_parameter_file_as_an_argument(monkeypatch):
    # `launch` is not installable here (docs: ros2.md): stand-ins record what sim.launch.py builds.
    import importlib.util
    import sys
    import types
    from pathlib import Path

    class Recorded:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    stand_ins = {
        "launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "IncludeLaunchDescription"],
        "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
        "launch.substitutions": ["LaunchConfiguration"], "launch_ros": [], "launch_ros.actions": ["Node"],
        "launch_ros.parameter_descriptions": ["ParameterValue"],
    }
    for name, classes in stand_ins.items():
        module = types.ModuleType(name)
        for cls in classes:
            setattr(module, cls, type(cls, (Recorded,), {}))
        monkeypatch.setitem(sys.modules, name, module)
    packages = types.ModuleType("ament_index_python.packages")
    packages.get_package_share_directory = lambda package: f"/opt/share/{package}"
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", packages)
    path = Path(__file__).resolve().parents[1] / "launch" / "sim.launch.py"
    spec = importlib.util.spec_from_file_location("sim_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actions = module.generate_launch_description().args[0]
    arguments = {a.args[0]: a.kwargs for a in actions if type(a).__name__ == "DeclareLaunchArgument"}
    assert arguments["sim_params_file"]["default_value"] == "/opt/share/jepa_wm/config/sim.yaml"
    sim = next(a for a in actions if type(a).__name__ == "Node" and a.kwargs["executable"] == "sim")
    params_file = sim.kwargs["parameters"][0]  # first: the launch's own overrides (use_sim_time) come after it
    assert type(params_file).__name__ == "LaunchConfiguration" and params_file.args == ("sim_params_file",)
