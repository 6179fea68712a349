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
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration, PythonExpression


def generate_launch_description():
    camera = LaunchConfiguration("camera_topic")
    controller = LaunchConfiguration("controller_name")
    return LaunchDescription([
        DeclareLaunchArgument("output", default_value="jepa_wm_bag", description="bag directory to create"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("controller_name", default_value="/arm_controller"),
        DeclareLaunchArgument("object_pose_topic", default_value="/object_pose",
                              description="PoseStamped of a tracked object (recorded if published)"),
        ExecuteProcess(
            cmd=[
                "ros2", "bag", "record", "-s", "mcap", "-o", LaunchConfiguration("output"),
                camera,
                PythonExpression(["'", camera, "' + '/compressed'"]),
                PythonExpression(["'", camera, "'.rsplit('/', 1)[0] + '/camera_info'"]),
                "/joint_states",
                LaunchConfiguration("object_pose_topic"),
                PythonExpression(["'", controller, "' + '/joint_trajectory'"]),
                PythonExpression(["'", controller, "' + '/commands'"]),
                "/command_gate/state", "/jepa_wm/stop", "/diagnostics",
                "/planner/predicted_latent", "/planner/observed_latent", "/surprise_monitor/score",
            ],
            output="screen",
        ),
    ])
