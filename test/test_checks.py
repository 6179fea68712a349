"""The model-free checks beside the surprise score: a frozen camera, a stuck joint."""

import numpy as np
import pytest

from jepa_wm.core.checks import FrozenFrameCheck, StuckJointCheck


def test_frozen_frame_check_trips_on_a_repeated_frame_only_while_the_arm_moves():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    check = FrozenFrameCheck(motion=0.02)
    # A live camera: every frame differs, whatever the arm does.
    assert not any(check.update(f, {"shoulder": 0.1 * i}) for i, f in enumerate(frames))
    # A still scene renders the same frame again and again: not frozen while the arm stands still.
    assert not any(check.update(frames[-1].copy(), {"shoulder": 0.2 + 1e-4 * i}) for i in range(5))
    # The camera repeats its last frame while the arm moves on: tripped once the motion passes 0.02 rad.
    trips = [check.update(frames[-1].copy(), {"shoulder": 0.2 + 0.015 * i, "elbow": 0.0}) for i in range(1, 4)]
    assert trips == [False, True, True] and check.moved == pytest.approx(0.045, abs=1e-9)
    # The same bytes from a message buffer count the same; a new frame starts over.
    assert check.update(frames[-1].tobytes(), {"shoulder": 1.0})
    assert not check.update(frames[0], {"shoulder": 1.0})
    # Joints it cannot compare (none yet, or other names) are not motion.
    assert not check.update(frames[0], {"wrist": 3.0})
    # After a reset (a new episode) the first frame is new content, whatever came before.
    assert check.update(frames[0], {"shoulder": 2.0})
    check.reset()
    assert not check.update(frames[0], {"shoulder": 3.0})
    with pytest.raises(ValueError, match="motion > 0"):
        FrozenFrameCheck(0.0)


def test_stuck_joint_check_trips_when_a_joint_stops_while_its_command_moves_on():
    check = StuckJointCheck(lead=0.03, still=0.001, steps=2)
    q, trips = np.zeros(3), []
    # A soft, re-zeroed arm: 0.25 rad off its commands and closing only a fifth of the gap per step.
    offset = np.array([0.25, -0.25, 0.2])
    for t in range(30):
        cmd = 0.02 * t * np.array([1.0, -1.0, 0.6])
        trips.append(check.update(cmd, q))
        q = q + 0.2 * (cmd + offset - q)
    assert not any(trips)
    # The elbow jams while its command moves on 0.012 rad a step: stuck once the command is more than
    # 0.03 rad past the one in force when the elbow last moved (the third step), tripped on the fourth.
    stuck = []
    for t in range(30, 36):
        cmd = 0.02 * t * np.array([1.0, -1.0, 0.6])
        stuck.append(check.update(cmd, q))
        q = q + 0.2 * (cmd + offset - q) * np.array([1, 1, 0])
    assert stuck == [False, False, False, False, True, True]
    assert check.joint == 2 and check.excess > 0.03
    # A joint held still by its command is not stuck, however far it is from it.
    check.reset()
    assert not any(check.update([1.0, 0.0, 0.0], [0.5, 0.0, 0.0]) for _ in range(10))
    with pytest.raises(ValueError, match="lead > 0"):
        StuckJointCheck(lead=0)
