"""Planner + surprise monitor + command gate for a real (or simulated) arm.

    ros2 launch jepa_wm plan.launch.py model:=/path/model.safetensors \
        camera_topic:=/camera/image_raw controller_type:=joint_trajectory \
        joint_names:='[base_yaw, shoulder, elbow]'

Defaults for every parameter live in config/planner.yaml, monitor.yaml and
gate.yaml; the arguments below override the ones that differ per robot. The
planner is a lifecycle node that configures and activates itself
(`autostart: true`). The surprise monitor starts with its protective stop
latched, so the gate forwards nothing (teleop included): once the camera is
live, call /surprise_monitor/reset. Autonomy starts disengaged: call
/command_gate/engage.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("jepa_wm")
    config = os.path.join(share, "config")
    model = LaunchConfiguration("model")
    camera_topic = LaunchConfiguration("camera_topic")
    image_transport = LaunchConfiguration("image_transport")
    controller_type = LaunchConfiguration("controller_type")
    controller_name = LaunchConfiguration("controller_name")
    joint_names = LaunchConfiguration("joint_names")
    use_sim_time = LaunchConfiguration("use_sim_time")
    goal_image = LaunchConfiguration("goal_image")
    output_type = controller_type  # the planner speaks what the controller needs; the gate converts anyway
    common = {"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value=os.path.join(share, "models", "sim.safetensors"),
                              description="jepa_wm checkpoint (.safetensors)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="camera Image topic"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="read Image on camera_topic, or CompressedImage on <camera_topic>/compressed"),
        DeclareLaunchArgument("controller_type", default_value="joint_trajectory",
                              choices=["joint_trajectory", "forward_command"],
                              description="which ros2_control controller the gate feeds"),
        DeclareLaunchArgument("controller_name", default_value="/arm_controller",
                              description="controller namespace (<name>/joint_trajectory or <name>/commands)"),
        DeclareLaunchArgument("joint_names", default_value="[base_yaw, shoulder, elbow]",
                              description="the arm's joints in the model's action order, YAML list"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("goal_image", default_value="",
                              description="goal image file (png/jpg) the planner loads at configure; '' = none yet"),
        Node(
            package="jepa_wm", executable="planner", name="planner", output="screen",
            parameters=[os.path.join(config, "planner.yaml"), common, {
                "model": model, "camera_topic": camera_topic, "image_transport": image_transport, "output_type": output_type,
                "joint_names": joint_names, "goal_image": goal_image,
            }],
        ),
        Node(
            package="jepa_wm", executable="surprise_monitor", name="surprise_monitor", output="screen",
            parameters=[os.path.join(config, "monitor.yaml"), common, {"model": model, "camera_topic": camera_topic,
                                                                         "image_transport": image_transport}],
        ),
        Node(
            package="jepa_wm", executable="command_gate", name="command_gate", output="screen",
            parameters=[os.path.join(config, "gate.yaml"), common, {
                "controller_type": controller_type, "controller_name": controller_name, "joint_names": joint_names,
            }],
        ),
    ])
