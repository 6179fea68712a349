"""Gazebo (gz sim) instead of the embedded simulator: a thin launch file over the same nodes.

NOTE: Gazebo, ros_gz and gz_ros2_control cannot be installed on the machine
this package is developed and tested on, so this file has never been run
there; its launch_pytest test skips. It follows the ros_gz / gz_ros2_control
documentation: start gz sim, spawn the robot from robot_description, bridge
the camera and /clock, start joint_state_broadcaster and the arm controller
(the robot's URDF must load gz_ros2_control's GazeboSimSystem plugin and its
controllers YAML), then run planner + monitor + gate with use_sim_time.

    ros2 launch jepa_wm gazebo.launch.py world:=my_world.sdf \
        robot_description_file:=robot.urdf controllers_file:=controllers.yaml \
        model:=/path/model.safetensors
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import Command, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("jepa_wm")
    ros_gz_sim = get_package_share_directory("ros_gz_sim")
    camera_gz = LaunchConfiguration("gz_camera_topic")
    robot_description = ParameterValue(Command(["cat ", LaunchConfiguration("robot_description_file")]), value_type=str)
    spawn = Node(package="ros_gz_sim", executable="create", output="screen",
                 arguments=["-topic", "robot_description", "-name", "arm"])
    jsb = Node(package="controller_manager", executable="spawner", arguments=["joint_state_broadcaster"])
    arm = Node(package="controller_manager", executable="spawner",
               arguments=[LaunchConfiguration("controller"), "--param-file", LaunchConfiguration("controllers_file")])
    return LaunchDescription([
        DeclareLaunchArgument("world", default_value="empty.sdf", description="gz sim world"),
        DeclareLaunchArgument("robot_description_file", description="URDF with the gz_ros2_control plugin"),
        DeclareLaunchArgument("controllers_file", description="ros2_control controllers YAML"),
        DeclareLaunchArgument("controller", default_value="arm_controller"),
        DeclareLaunchArgument("gz_camera_topic", default_value="/camera", description="camera topic inside gz"),
        DeclareLaunchArgument("model", default_value=os.path.join(share, "models", "sim.safetensors")),
        DeclareLaunchArgument("joint_names", default_value="[base_yaw, shoulder, elbow]"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(ros_gz_sim, "launch", "gz_sim.launch.py")),
            launch_arguments={"gz_args": ["-r ", LaunchConfiguration("world")]}.items(),
        ),
        Node(package="robot_state_publisher", executable="robot_state_publisher", output="screen",
             parameters=[{"robot_description": robot_description, "use_sim_time": True}]),
        spawn,
        Node(package="ros_gz_bridge", executable="parameter_bridge", output="screen",
             arguments=[[camera_gz, "@sensor_msgs/msg/Image[gz.msgs.Image"], "/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock"],
             remappings=[(camera_gz, "/camera/image_raw")]),
        RegisterEventHandler(OnProcessExit(target_action=spawn, on_exit=[jsb])),
        RegisterEventHandler(OnProcessExit(target_action=jsb, on_exit=[arm])),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "plan.launch.py")),
            launch_arguments={
                "model": LaunchConfiguration("model"),
                "camera_topic": "/camera/image_raw",
                "controller_type": "joint_trajectory",
                "controller_name": ["/", LaunchConfiguration("controller")],
                "joint_names": LaunchConfiguration("joint_names"),
                "use_sim_time": "true",
            }.items(),
        ),
    ])
