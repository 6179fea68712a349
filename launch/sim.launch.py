"""The embedded MuJoCo simulator behind real ROS topics, plus planner, monitor and gate.

    ros2 launch jepa_wm sim.launch.py model:=/path/model.safetensors
    ros2 launch jepa_wm sim.launch.py sim_params_file:=/path/my_sim.yaml model:=... joint_names:="[j1, j2]"

The simulator publishes /camera/image_raw, /camera/camera_info and
/joint_states and listens on /arm_controller/joint_trajectory and
/arm_controller/commands like ros2_control would; perturbation services are
under /sim/ (teleport_object, block_joint, freeze_camera, occlude_camera, reset).
The surprise monitor starts with its stop latched: call /surprise_monitor/reset
once the camera is live, then teleop or /command_gate/engage.
`sim_params_file` is the simulator's parameter file (default: the shipped
config/sim.yaml): yours names your scene, camera and joints; keys it leaves out
keep their defaults.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("jepa_wm")
    use_sim_time = LaunchConfiguration("use_sim_time")
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value=os.path.join(share, "models", "sim.safetensors"),
                              description="jepa_wm checkpoint (.safetensors)"),
        DeclareLaunchArgument("controller_type", default_value="joint_trajectory",
                              choices=["joint_trajectory", "forward_command"]),
        DeclareLaunchArgument("joint_names", default_value="[base_yaw, shoulder, elbow]",
                              description="the simulated arm's joints, YAML list"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true: the simulator publishes /clock and every node follows it"),
        DeclareLaunchArgument("sim_params_file", default_value=os.path.join(share, "config", "sim.yaml"),
                              description="the simulator's parameter file (scene, camera, joints, ...)"),
        Node(
            package="jepa_wm", executable="sim", name="sim", output="screen",
            parameters=[LaunchConfiguration("sim_params_file"), {
                "publish_clock": ParameterValue(use_sim_time, value_type=bool),
                "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
            }],
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "plan.launch.py")),
            launch_arguments={
                "model": LaunchConfiguration("model"),
                "camera_topic": "/camera/image_raw",
                "controller_type": LaunchConfiguration("controller_type"),
                "controller_name": "/arm_controller",
                "joint_names": LaunchConfiguration("joint_names"),
                "use_sim_time": use_sim_time,
            }.items(),
        ),
    ])
