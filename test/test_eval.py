"""`jepa-wm eval` end to end on the embedded simulator, and the fixed goal protocol behind it."""

import json

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")

from jepa_wm.cli import main as cli  # noqa: E402
from jepa_wm.eval import goals  # noqa: E402
from jepa_wm.eval.surprise_events import auroc  # noqa: E402
from jepa_wm.sim.arm import ArmSim, SimConfig  # noqa: E402


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
    s = report["surprise"]
    assert s["nominal_episodes"] == 2 and s["nominal_prediction_error"] > 0
    for kind in ("teleport", "blocked_joint", "frozen_camera"):
        assert 0.0 <= s[kind]["auroc"] <= 1.0 and s[kind]["episodes"] == 2
    for png in ("reach_filmstrip.png", "reach_errors.png", "surprise.png"):
        assert (out / png).stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert "reach: success" in printed and "AUROC" in printed


def test_changed_robot_flags_reach_the_simulator(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="joint_gain_scale has 2 values"):
        cli(["eval", "--model", str(tiny_checkpoint), "--goals", "1", "--budget", "1", "--surprise-episodes", "0",
             "--joint-gain-scale", "1", "0.5", "--out", str(tmp_path)])
