"""`jepa-wm eval` end to end on the embedded simulator, and the fixed goal protocol behind it."""

import json

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")

from jepa_wm.cli import main as cli  # noqa: E402
from jepa_wm.core.checks import FrozenFrameCheck, StuckJointCheck  # noqa: E402
from jepa_wm.eval import goals  # noqa: E402
from jepa_wm.eval import surprise_events  # noqa: E402
from jepa_wm.eval.surprise_events import auroc  # noqa: E402
from jepa_wm.sim.arm import ArmSim, SimConfig  # noqa: E402
from jepa_wm.sim.explore import ExplorationPolicy  # noqa: E402


def test_goal_set_is_seeded_reachable_and_inside_the_limits():
    sim = ArmSim(SimConfig())
    a, b = goals.make_tasks(sim, 6, seed=1000), goals.make_tasks(sim, 6, seed=1000)
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    for t, u in zip(a, b):
        np.testing.assert_array_equal(t.goal, u.goal)  # the same goals for every model
        for q in (t.start, t.goal):
            assert np.all(q > lo) and np.all(q < hi)
            assert sim.collision_free(q, t.object_xy), "a goal inside the table is unreachable"


def test_auroc_means_what_it_says():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


class HoldStill:
    def reset(self, seed):
        pass

    def act(self, obs):
        return obs.joint_pos


class GoToGoal:
    """A scripted agent (the run_episode interface) that commands the goal configuration."""

    def __init__(self, goal):
        self.goal = goal

    def reset(self, goal_image, first_image):
        pass

    def act(self, image=None, joint_pos=None):
        return self.goal

    def goal_distance(self):
        return 0.0


def test_push_goals_score_where_the_object_ends_not_only_the_arm():
    sim = ArmSim(SimConfig())
    reach = goals.make_tasks(sim, 1, seed=1000)[0]
    moved = goals.GoalTask(reach.start, reach.goal, reach.object_xy, reach.object_xy + [0.06, 0.0])
    # The arm reaches the goal pose without touching the object, so the object stays 6 cm off.
    ep = goals.run_episode(sim, moved, GoToGoal(reach.goal), 20, tolerance=0.1, object_tolerance=0.02)
    assert ep.pose_reached and not ep.success
    assert ep.object_error == pytest.approx(0.06, abs=0.005)
    # Without an object tolerance (reach goals) the pose alone decides, and the object error is still reported.
    ep = goals.run_episode(sim, moved, GoToGoal(reach.goal), 20, tolerance=0.1)
    assert ep.success and ep.object_error == pytest.approx(0.06, abs=0.005)
    ep = goals.run_episode(sim, reach, GoToGoal(reach.goal), 20, tolerance=0.1, object_tolerance=0.02)
    assert ep.success and ep.object_error < 0.005


def test_events_count_from_the_first_frame_that_shows_them():
    sim = ArmSim(SimConfig())
    policy = ExplorationPolicy(sim)
    frames, actions, onset, joints = surprise_events.record(sim, policy, 40, seed=3, kind="frozen_camera", start=10)
    sim.reset()
    # A frozen camera repeats the frame before the freeze; it shows once the arm has moved.
    assert all(np.array_equal(f, frames[9]) for f in frames[10:])
    assert onset >= 10 and len(joints) == len(frames)
    # The monitor's frozen-frame check trips from the frame that shows it (scores index frame i + 1).
    frozen = surprise_events.check_trips(frames, joints, actions, FrozenFrameCheck(0.02), None)
    assert not frozen[:9].any() and frozen[onset - 1]
    # A jammed joint shows once it is asked to move: never, under a policy that holds the arm still.
    _, _, onset, _ = surprise_events.record(sim, HoldStill(), 20, seed=3, kind="blocked_joint", start=5)
    sim.reset()
    assert onset == -1
    # Under exploration it shows; the gate's stuck-joint check trips within two frames of that.
    frames, actions, onset, joints = surprise_events.record(sim, policy, 40, seed=3, kind="blocked_joint", start=10)
    sim.reset()
    stuck = surprise_events.check_trips(frames, joints, actions, None, StuckJointCheck())
    assert onset >= 10 and not stuck[:9].any() and stuck[onset - 1:onset + 1].any()
    _, _, onset, _ = surprise_events.record(sim, policy, 40, seed=3, kind="teleport", start=10)
    sim.reset()
    assert onset == 10
    frames, actions, onset, joints = surprise_events.record(sim, policy, 40, seed=3)
    assert onset == -1
    assert not surprise_events.check_trips(frames, joints, actions, FrozenFrameCheck(0.02), StuckJointCheck()).any()


def test_eval_writes_the_report_and_the_plots(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli(["eval", "--model", str(tiny_checkpoint), "--goals", "2", "--budget", "4",
                "--surprise-episodes", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    reach = report["reach"]
    for who in ("planner", "random"):
        assert reach[who]["episodes"] == 2 and 0.0 <= reach[who]["success_rate"] <= 1.0
        assert reach[who]["final_error_mean"] > 0
    assert reach["planner"]["plan_ms_median"] > 0
    # The same events under exploration and under the planner driving the arm to goals (what the monitor
    # watches in deployment), with the checkpoint's calibration.
    for key in ("surprise", "surprise_closed_loop"):
        s = report[key]
        assert s["nominal_episodes"] == 2 and s["nominal_prediction_error"] > 0
        assert s["calibration"]["threshold"] == 5.0
        assert s["checks_nominal_stops"] >= s["nominal_stops"]
        for kind in ("teleport", "blocked_joint", "frozen_camera"):
            assert s[kind]["episodes"] + s[kind]["never_visible"] == 2
            assert s[kind]["episodes"] == 0 or 0.0 <= s[kind]["auroc"] <= 1.0
        assert s["teleport"]["episodes"] == 2  # a jump is visible at once
        # A frozen camera that shows (the arm moved 0.05 rad) has already moved past the frozen-frame check.
        assert s["frozen_camera"]["episodes"] == 0 or s["frozen_camera"]["checks"]["detected_within_2"] == 1.0
    s = report["surprise"]
    # Lower thresholds never stop fewer nominal episodes nor detect fewer events.
    sweep = s["threshold_sweep"]
    assert sweep[0]["threshold"] == pytest.approx(s["calibration"]["threshold"])
    assert [r["threshold"] for r in sweep] == sorted((r["threshold"] for r in sweep), reverse=True)
    assert sweep[0]["nominal_stops"] == s["nominal_stops"]
    assert sweep[0]["teleport_within_2"] == s["teleport"]["detected_within_2"]
    for hi, lo in zip(sweep, sweep[1:]):
        assert lo["nominal_stops"] >= hi["nominal_stops"] and lo["teleport_within_2"] >= hi["teleport_within_2"]
    for png in ("reach_filmstrip.png", "reach_errors.png", "surprise.png", "surprise_closed_loop.png"):
        assert (out / png).stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert "reach: success" in printed and "surprise closed loop: threshold" in printed and "AUROC" in printed


def test_changed_robot_flags_reach_the_simulator(tiny_checkpoint, tmp_path, capsys):
    base = ["eval", "--model", str(tiny_checkpoint), "--goals", "1", "--budget", "1", "--surprise-episodes", "0",
            "--out", str(tmp_path)]
    assert cli(base + ["--joint-gain-scale", "1", "0.5"]) == 2
    assert "joint_gain_scale has 2 values" in capsys.readouterr().err
    assert cli(base + ["--added-mass", "nobody=1"]) == 2
    assert "added_mass names body 'nobody'" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("cfg, message", [
    (dict(control_dt=0), "control_dt is 0"),
    (dict(control_dt=float("nan")), "control_dt is nan"),
    (dict(width=0), "image width is 0"),
    (dict(width=4096), "image size 4096x64"),
    (dict(camera="nocam"), "camera 'nocam' not found"),
    (dict(joint_gain_scale=[1.0, -1.0, 1.0]), "joint_gain_scale"),
    (dict(added_mass={"pusher": -100.0}), "added_mass pusher=-100.0"),
])
def test_simulator_configuration_errors_are_config_errors(cfg, message):
    """ConfigError, not a bare ValueError: the CLI reports it in one line instead of a traceback."""
    from jepa_wm.core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        ArmSim(SimConfig(**cfg))


@pytest.mark.parametrize("flag, value", [
    ("--goals", "0"), ("--goals", "-1"), ("--budget", "0"), ("--surprise-episodes", "-1"), ("--tolerance", "0"),
    ("--object-tolerance", "nan"), ("--seed", "-1"),
])
def test_eval_refuses_bad_numbers_on_the_command_line(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        cli(["eval", flag, value, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert f"argument {flag}: '{value}' is not" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, message", [
    ("planner:\n  ros__parameters:\n    sampels: 64\n",
     r"unknown key\(s\) \['sampels'\].*did you mean 'sampels' -> 'samples'"),
    ("planer:\n  ros__parameters:\n    samples: 64\n", r"no 'planner: ros__parameters:' section .*\['planer'\]"),
    ("planner:\n  ros__parameters:\n    samples: many\n", "ros__parameters: samples must be an integer, got 'many'"),
    ("planner: [\n", "not valid YAML"),
    (None, "no such file"),
])
def test_eval_refuses_a_bad_planner_config_before_any_work(tmp_path, capsys, text, message):
    import re

    path = tmp_path / "planner.yaml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "eval"
    assert cli(["eval", "--planner-config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--planner-config {path}" in err and re.search(message, err), err
    assert not out.exists()


def test_a_planner_config_may_hold_any_subset_of_the_nodes_parameters(tmp_path):
    from jepa_wm.eval.common import planner_config

    path = tmp_path / "planner.yaml"
    path.write_text("planner:\n  ros__parameters:\n    model: other.safetensors\n    samples: 32\n")
    cfg = planner_config(path)
    assert cfg.samples == 32 and cfg.elites == planner_config().elites  # unset keys keep the node's defaults


def test_eval_refuses_an_out_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("")
    for out in (taken, taken / "sub"):
        assert cli(["eval", "--out", str(out)]) == 2
        assert f"{taken} exists and is not a directory; choose another --out" in capsys.readouterr().err


def test_calibrate_refits_the_threshold_on_simulated_closed_loop_runs(tiny_checkpoint, tmp_path, capsys):
    from jepa_wm.core.checkpoint import read_header

    out = tmp_path / "calibrated.safetensors"
    assert cli(["calibrate", "--model", str(tiny_checkpoint), "--out", str(out), "--sim-goals", "2",
                "--sim-explore", "2", "--steps", "12", "--whiten"]) == 0
    meta = read_header(out)["meta"]
    cal, source = meta["surprise"], meta["surprise_source"]
    assert cal["threshold"] > 0 and cal["scale"] > 0 and cal["false_trip_rate"] == 0.0  # no stop on its own data
    assert len(cal["whitening"]) == 16  # the tiny model's latent dimension
    assert source["sim_goals"] == 2 and source["sim_explore"] == 2 and source["parent"] == str(tiny_checkpoint)
    assert read_header(tiny_checkpoint)["meta"]["surprise"]["threshold"] == 5.0  # the parent is left alone
    assert (tmp_path / "calibrated.surprise.png").stat().st_size > 5_000
    assert "threshold" in capsys.readouterr().out
    assert cli(["calibrate", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x.safetensors")]) == 2


def test_calibrate_is_the_same_with_parallel_workers(tiny_checkpoint, tmp_path):
    """Each simulated episode is seeded by its index, so splitting them over processes changes nothing."""
    from jepa_wm.core.checkpoint import read_header

    cals = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.safetensors"
        assert cli(["calibrate", "--model", str(tiny_checkpoint), "--out", str(out), "--sim-goals", "2",
                    "--sim-explore", "1", "--steps", "8", "--workers", str(workers)]) == 0
        cals.append(read_header(out)["meta"]["surprise"])
    assert cals[0]["scale"] == pytest.approx(cals[1]["scale"], rel=1e-5)
    assert cals[0]["threshold"] == pytest.approx(cals[1]["threshold"], rel=1e-5)


def test_the_evaluation_simulator_takes_the_model_action_order():
    # A model trained with data.joint_names reordering the scene's joints: its actions must drive those joints.
    from jepa_wm.eval.common import make_sim

    sim = make_sim({"sim": {"joint_names": []}, "joint_names": ["elbow", "shoulder", "base_yaw"]})
    assert list(sim.joint_names) == ["elbow", "shoulder", "base_yaw"]
    # Also when collect recorded its own order (--joint-names): the model's is the one its actions follow.
    sim = make_sim({"sim": {"joint_names": ["base_yaw", "shoulder", "elbow"]}, "joint_names": ["shoulder", "base_yaw"]})
    assert list(sim.joint_names) == ["shoulder", "base_yaw"]
    assert list(make_sim({"sim": {}}).joint_names) == ["base_yaw", "shoulder", "elbow"]  # no order recorded: the scene's


def test_the_injected_teleport_keeps_the_object_on_the_table():
    # The builtin table ends at x 0.65: from 3 cm inside its edge, half the jumps used to drop the puck off it.
    sim = ArmSim(SimConfig(width=16, height=16))
    for seed in range(12):
        sim.reset(seed=seed, object_xy=[0.62, 0.0])
        surprise_events.inject(sim, "teleport", np.random.default_rng(seed))
        x, y = sim.object_xy()
        assert -0.25 < x < 0.65 and -0.45 < y < 0.45, (seed, x, y)
        assert np.hypot(x - 0.62, y) >= 0.08  # still a jump


def test_eval_skips_the_teleport_in_a_scene_without_an_object(tmp_path, capsys):
    from user_robot import write_checkpoint, write_scene

    model = write_checkpoint(tmp_path / "m.safetensors", write_scene(tmp_path / "arm.xml", with_object=False))
    planner = tmp_path / "planner.yaml"  # a cheap plan: this test is about the events, not the plans
    planner.write_text("planner:\n  ros__parameters:\n    samples: 8\n    iterations: 1\n    warm_iterations: 1\n"
                       "    elites: 2\n")
    out = tmp_path / "eval"
    assert cli(["eval", "--model", str(model), "--goals", "1", "--budget", "2", "--surprise-episodes", "1",
                "--planner-config", str(planner), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("surprise", "surprise_closed_loop"):
        assert report[key]["teleport"] == {"skipped": "the scene has no object to teleport"}
        assert report[key]["blocked_joint"]["episodes"] + report[key]["blocked_joint"]["never_visible"] == 1
    assert "  teleport: skipped (the scene has no object to teleport)" in capsys.readouterr().out


def test_a_checkpoint_whose_scene_is_gone_is_named_with_it(tmp_path, monkeypatch, capsys):
    from user_robot import write_checkpoint, write_scene

    write_scene(tmp_path / "scenes" / "arm.xml")
    model = write_checkpoint(tmp_path / "m.safetensors", "scenes/arm.xml")  # as collect once stored it: relative
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli(["eval", "--model", str(model), "--goals", "1", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert (f"jepa-wm eval: error: checkpoint {model} names sim.scene scenes/arm.xml, the scene its training data "
            "was collected in, and that does not exist (a relative path") in err, err
