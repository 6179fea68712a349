"""`jepa-wm demo`, the README's main job: simulator, planner, monitor and gate in closed loop, end to end."""

import subprocess
import sys

import pytest

from jepa_wm.cli import main
from jepa_wm.resources import model_file

MODEL = model_file()  # the checkpoint the demo loads by default


@pytest.mark.skipif(not MODEL.is_file(), reason=f"no trained checkpoint at {MODEL} (train one with `jepa-wm train`)")
def test_demo_reaches_its_goals_passes_its_safety_checks_and_writes_its_summary(tmp_path, ros_domain):
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for the demo")
    pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")
    out = tmp_path / "results" / "summary"  # a folder that does not exist yet, and a name without ".png"
    # ros_domain has put this test's own ROS domain, localhost only, into the environment the demo inherits.
    r = subprocess.run([sys.executable, "-m", "jepa_wm", "demo", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "all safety checks passed" in r.stdout, log[-4000:]
    assert "reached 2/2 goals" in r.stdout, log[-4000:]
    # The monitor starts latched and the gate holds it; the demo resets it, once the camera is live, before goal 1.
    assert "-> stopped" in r.stdout.split("reset: reset; was: monitor started")[0], log[-4000:]
    assert r.stdout.index("reset: reset; was: monitor started") < r.stdout.index("goal 1:"), log[-4000:]
    assert f"summary written to {out};" in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the summary is not a PNG at the path asked for"


@pytest.mark.parametrize("argv, message", [
    (["--goals", "0"], "argument --goals: '0' is not an integer >= 1"),
    (["--budget", "-1"], "argument --budget: '-1' is not a finite number > 0"),
    (["--tolerance", "0"], "argument --tolerance: '0' is not a finite number > 0"),
    (["--consecutive", "-1"], "argument --consecutive: '-1' is not an integer >= 0"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_out_folder_fails_before_the_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 2  # before any node starts: this returns at once
    assert f"jepa-wm demo: error: --out {tmp_path} is a directory" in capsys.readouterr().err


def test_demo_runs_the_scene_the_model_was_trained_in(tmp_path, ros_domain):
    # The demo's simulator used to be config/sim.yaml's builtin arm whatever the model: a model of the user's own
    # arm (other joints) died at start-up.
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for the demo")
    pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")
    from user_robot import write_checkpoint, write_scene

    model = write_checkpoint(tmp_path / "m.safetensors", write_scene(tmp_path / "arm.xml"))
    out = tmp_path / "demo.png"
    r = subprocess.run([sys.executable, "-m", "jepa_wm", "demo", "--model", str(model), "--goals", "1", "--budget", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    # A random-weight model: the safety checks may fail (exit 1), but the demo runs its whole script on this arm.
    assert r.returncode in (0, 1), log[-4000:]
    assert "sim up: joints ['j_yaw', 'j_pitch', 'j_wrist'], camera '/camera/image_raw' 32x32" in log, log[-4000:]
    assert "goal 1: joints [" in r.stdout and f"summary written to {out}" in r.stdout, log[-4000:]


def test_demo_names_the_checkpoint_whose_scene_is_gone(tmp_path, capsys):
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for the demo")
    from user_robot import write_checkpoint

    model = write_checkpoint(tmp_path / "m.safetensors", tmp_path / "moved.xml")
    assert main(["demo", "--model", str(model), "--out", str(tmp_path / "demo.png")]) == 2  # before any node starts
    err = capsys.readouterr().err
    assert f"jepa-wm demo: error: checkpoint {model} names sim.scene {tmp_path / 'moved.xml'}" in err, err
