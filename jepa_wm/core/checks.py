"""Checks beside the surprise score, for the two events it sees late: a frozen camera and a jammed joint.

Both leave a commanded motion missing from what the model observes, and a
slow arm makes that small: within two frames the score caught 45% of frozen
cameras and 30% of jammed joints under exploration, none under the planner
(models/README.md). Each has a direct sign that needs no model. The surprise
monitor runs FrozenFrameCheck on every frame; the command gate, which sees
both commands and joint states, runs StuckJointCheck on every autonomy command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


class FrozenFrameCheck:
    """A frame bit-identical to the one before while the joints moved more than `motion` rad: a frozen camera.

    Sensor noise makes consecutive frames of a real camera differ somewhere; a driver that hangs and re-sends
    its last buffer does not. A rendered camera repeats the frames of a still scene exactly, hence the motion
    condition: the joints are compared with where they were when the repeated frame first arrived.
    """

    def __init__(self, motion: float):
        if not motion > 0:
            raise ValueError(f"need motion > 0 rad, got {motion}")
        self.motion = motion
        self.reset()

    def reset(self):
        self.digest: bytes | None = None
        self.since: dict = {}  # joint positions when the current frame content first arrived
        self.moved = 0.0  # rad, largest joint motion while the frame did not change

    def update(self, frame, joints: Mapping) -> bool:
        """frame: its bytes (any buffer: a message's data, an image array); joints: name -> position (rad)."""
        buf = frame if not isinstance(frame, np.ndarray) else np.ascontiguousarray(frame)
        digest = hashlib.blake2b(buf, digest_size=16).digest()
        if digest != self.digest:
            self.digest, self.since, self.moved = digest, dict(joints), 0.0
            return False
        common = self.since.keys() & joints.keys()
        self.moved = max((abs(joints[k] - self.since[k]) for k in common), default=0.0)
        return self.moved > self.motion


class StuckJointCheck:
    """A joint that stops moving while its command moves on: jammed, braked, or pressed against something.

    Call `update` once per control step with the command sent now and the joints measured now. For each joint
    it keeps where the joint was, and what it was commanded, when it last moved (more than `still` rad from
    there); a joint that has not moved since, while its command went on more than `lead` rad past that
    command, is stuck. It trips after `steps` stuck steps in a row. Only changes count, so a re-zeroed joint
    or a soft drive that lags its commands does not trip it, where a bound on command minus measurement would;
    and motion is summed since the anchor, so a joint creeping after small commands is not stuck either.
    """

    def __init__(self, lead: float = 0.03, still: float = 0.001, steps: int = 2):
        if not (lead > 0 and still > 0 and steps >= 1):
            raise ValueError(f"need lead > 0, still > 0 and steps >= 1, got {lead}, {still}, {steps}")
        self.lead, self.still, self.steps = lead, still, steps
        self.reset()

    def reset(self):
        self.command = self.anchor = self.anchor_joints = None
        self.run = 0
        self.joint, self.excess = -1, 0.0  # the stuck joint's index and how far its command went on (rad)

    def update(self, command, joints) -> bool:
        command, joints = np.asarray(command, float), np.asarray(joints, float)
        if self.command is None or command.shape != self.command.shape or joints.shape != self.anchor_joints.shape:
            self.reset()
            self.command, self.anchor, self.anchor_joints = command, command.copy(), joints
            return False
        moved = np.abs(joints - self.anchor_joints) > self.still
        # The command of the step just executed is in force where the joint moved: the new anchor.
        self.anchor = np.where(moved, self.command, self.anchor)
        self.anchor_joints = np.where(moved, joints, self.anchor_joints)
        excess = np.where(moved, 0.0, np.abs(self.command - self.anchor))
        self.command = command
        if excess.max() > self.lead:
            self.run += 1
            self.joint, self.excess = int(excess.argmax()), float(excess.max())
        else:
            self.run = 0
        return self.run >= self.steps
