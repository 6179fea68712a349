"""The exploration policy behind the training data: smooth random motion, plus deliberate pushes.

A world model only learns what the data shows. Random joint waypoints cover
the arm's configuration space, but rarely touch the object; so a fraction of
episodes also drive the end effector down behind the object and through it
(targets from damped least-squares IK on the simulator's Jacobian). Every
command moves each joint at most `max_step` rad from the previous one, which
keeps motion smooth and the actions in a range the planner can reproduce.
Deterministic under a seed.
"""

from __future__ import annotations

import numpy as np

from jepa_wm.sim.arm import ArmSim, Observation


def solve_ik(sim: ArmSim, target, q0, iters: int = 60, damping: float = 0.05, tol: float = 0.005):
    """Joint positions placing the end effector at `target` (xyz), from `q0`; returns (q, residual metres)."""
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    q = np.clip(np.asarray(q0, float), lo, hi)
    for _ in range(iters):
        p, J = sim.ee_jacobian(q)
        err = np.asarray(target, float) - p
        if np.linalg.norm(err) < tol:
            break
        dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(3), err)
        q = np.clip(q + np.clip(dq, -0.3, 0.3), lo, hi)
    return q, float(np.linalg.norm(np.asarray(target, float) - sim.ee_at(q)))


class ExplorationPolicy:
    """`act(obs)` -> absolute joint targets for the next control step."""

    def __init__(self, sim: ArmSim, push_fraction: float = 0.3, max_step: float = 0.15, seed: int = 0):
        self.sim = sim
        self.push_fraction = push_fraction
        self.max_step = max_step
        self.reset(seed)

    def reset(self, seed: int | None = None):
        """Start a new episode (call after sim.reset); decides now whether this one pushes."""
        self.rng = np.random.default_rng(seed)
        self.push = self.sim.has_object and self.rng.random() < self.push_fraction
        self.command = None
        self.waypoints: list[np.ndarray] = []
        self.hold = 0

    def act(self, obs: Observation) -> np.ndarray:
        if self.command is None:
            self.command = np.asarray(obs.joint_pos, float).copy()
            if self.push:
                self.waypoints = self._push_waypoints(self.command)
        if not self.waypoints:
            self.waypoints = [self._random_waypoint()]
            self.hold = int(self.rng.integers(0, 3))
        delta = self.waypoints[0] - self.command
        self.command = self.command + np.clip(delta, -self.max_step, self.max_step)
        if np.abs(delta).max() <= self.max_step:
            if self.hold > 0:
                self.hold -= 1
            else:
                self.waypoints.pop(0)
        return self.command.copy()

    def _random_waypoint(self) -> np.ndarray:
        """A configuration drawn uniformly from 90% of the joint ranges, reached without touching anything.

        The whole commanded path is checked, not just its end: an arm dragged over the table
        does not follow its commands, and 9% of steps in contact made the shoulder's motion
        mostly unpredictable, which a JEPA encoder learns to leave out of its latent.
        """
        lo, hi = self.sim.joint_limits[:, 0], self.sim.joint_limits[:, 1]
        mid, half = (lo + hi) / 2, 0.9 * (hi - lo) / 2
        best, longest = self.command.copy(), 0
        for _ in range(100):
            q = mid + self.rng.uniform(-1, 1, len(lo)) * half
            path = self._path(self.command, q)
            free = next((i for i, p in enumerate(path) if not self.sim.collision_free(p)), len(path))
            if free == len(path):
                return q
            if free > longest:  # otherwise: as far as the path stays clear
                best, longest = path[free - 1], free
        return best

    def _path(self, start, goal) -> list[np.ndarray]:
        """The commands `act` sends from `start` to `goal` (each joint at most max_step per step)."""
        path, q = [], np.asarray(start, float)
        while np.abs(goal - q).max() > 1e-9:
            q = q + np.clip(goal - q, -self.max_step, self.max_step)
            path.append(q)
        return path

    def _push_waypoints(self, q0) -> list[np.ndarray]:
        """Above a point behind the object, down to its height, then straight through it.

        An arm that cannot lift (a planar one, like the builtin scene) skips the approach from above.
        """
        obj = self.sim.object_pos()
        height = obj[2] + 0.01
        for _ in range(8):
            angle = self.rng.uniform(-np.pi, np.pi)
            direction = np.array([np.cos(angle), np.sin(angle), 0.0])
            behind = np.array([obj[0], obj[1], height]) - 0.09 * direction
            above, residual = solve_ik(self.sim, behind + [0, 0, 0.08], q0)
            path = [above] if residual <= 0.015 else []
            q = path[-1] if path else q0
            for p in (behind, behind + 0.2 * direction):
                q, residual = solve_ik(self.sim, p, q)
                if residual > 0.015:
                    break
                path.append(q)
            else:
                return path
        return []
