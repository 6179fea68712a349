"""launch_pytest tests of the launch files (need a ROS 2 install with launch_pytest and the package installed).

launch, launch_ros and launch_pytest are not on PyPI, so on a machine with ROS
from the `ros-*` wheels these skip; the same executables and parameter files
are exercised as processes by test_node_*.py, and test_launch_files.py checks
what these launch files reference.
"""

import os

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installable from PyPI; needs a ROS 2 install (apt ros-<distro>-launch-pytest)")
launch = pytest.importorskip("launch", reason="launch needs a ROS 2 install")
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from launch_pytest.tools import process as process_tools  # noqa: E402

try:
    SHARE = get_package_share_directory("jepa_wm")
except PackageNotFoundError:
    pytest.skip("jepa_wm is not installed in the ament index (colcon build or pip install .)", allow_module_level=True)

MODEL = os.environ.get("JEPA_WM_TEST_MODEL", os.path.join(SHARE, "models", "sim.safetensors"))


def _include(name, **args):
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", name)),
                                    launch_arguments=args.items())


@launch_pytest.fixture
def sim_launch():
    return launch.LaunchDescription([_include("sim.launch.py", model=MODEL), launch_pytest.actions.ReadyToTest()])


@pytest.mark.launch(fixture=sim_launch)
async def test_sim_launch_brings_up_all_four_nodes(launch_context):
    if not os.path.isfile(MODEL):
        pytest.skip(f"no checkpoint at {MODEL}")
    for name in ("sim", "planner", "surprise_monitor", "command_gate"):
        proc = next(a for a in launch_context.launch_state.processes if name in str(a.process_details["cmd"]))
        await process_tools.wait_for_output(proc, lambda out, n=name: "up" in out or "configured" in out, timeout=60)


@launch_pytest.fixture
def plan_launch():
    return launch.LaunchDescription([_include("plan.launch.py", model=MODEL), launch_pytest.actions.ReadyToTest()])


@pytest.mark.launch(fixture=plan_launch)
async def test_plan_launch_starts_gate_disengaged(launch_context):
    if not os.path.isfile(MODEL):
        pytest.skip(f"no checkpoint at {MODEL}")
    gate = next(a for a in launch_context.launch_state.processes if "command_gate" in str(a.process_details["cmd"]))
    await process_tools.wait_for_output(gate, lambda out: "gate up" in out, timeout=60)


@launch_pytest.fixture
def record_launch(tmp_path):
    return launch.LaunchDescription([_include("record.launch.py", output=str(tmp_path / "bag")),
                                     launch_pytest.actions.ReadyToTest()])


@pytest.mark.launch(fixture=record_launch)
async def test_record_launch_starts_ros2_bag(launch_context):
    proc = next(iter(launch_context.launch_state.processes))
    await process_tools.wait_for_output(proc, lambda out: "Recording" in out or "Listening" in out, timeout=60)


def test_gazebo_launch_needs_gz():
    pytest.importorskip("ros_gz_sim", reason="Gazebo / ros_gz is not installed")
    get_package_share_directory("ros_gz_sim")
