"""Record what training and debugging need into a rosbag2 MCAP bag.

    ros2 launch jepa_wm record.launch.py output:=bags/run1

Records the camera (Image and its /compressed variant), its camera_info,
/joint_states, a tracked object's pose where one is published (the
simulator's, or motion capture's: training reports how well the latent
encodes it), the gate's controller output, its state, the stop latch and
the planner/monitor latents and scores. rosbag2 subscribes best effort to
best-effort publishers (the camera), so frames are not missed for QoS reasons.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _record(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    camera, controller = arg("camera_topic"), arg("controller_name")
    topics = [
        camera, camera + "/compressed", camera.rsplit("/", 1)[0] + "/camera_info", "/joint_states",
        arg("object_pose_topic"),  # "" = no tracked object: `ros2 bag record` refuses an empty topic name
        controller + "/joint_trajectory", controller + "/commands",
        "/command_gate/state", "/jepa_wm/stop", "/diagnostics",
        "/planner/predicted_latent", "/planner/observed_latent", "/surprise_monitor/score",
    ]
    cmd = ["ros2", "bag", "record", "-s", "mcap", "-o", arg("output"), *(t for t in topics if t)]
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("output", default_value="jepa_wm_bag", description="bag directory to create"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("controller_name", default_value="/arm_controller"),
        DeclareLaunchArgument("object_pose_topic", default_value="/object_pose",
                              description="PoseStamped of a tracked object (recorded if published; '' = none)"),
        OpaqueFunction(function=_record),
    ])
