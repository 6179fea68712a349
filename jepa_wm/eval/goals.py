"""Closed-loop goal reaching in the embedded simulator: the protocol behind `jepa-wm eval`.

Protocol (fixed and seeded, so numbers are comparable across models):
goal i uses seed `seed + i`; the arm starts at a random joint configuration,
the goal image is rendered at another random configuration, and the planner
gets `budget` control steps. The episode succeeds when the joints end within
`tolerance` rad (max over joints) of the goal configuration. Reach goals leave
the object where it is; push goals also move it up to 8 cm in the goal image,
and succeed only when the object, too, ends within `object_tolerance` m of
where the goal image shows it. The random baseline sends uniformly random
targets within the same bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from jepa_wm.core.config import PlannerConfig
from jepa_wm.core.model import WorldModel, preprocess
from jepa_wm.core.planner import CEMPlanner, JointMetric, normalised_bounds


@dataclass
class GoalTask:
    start: np.ndarray
    goal: np.ndarray
    object_xy: np.ndarray
    goal_object_xy: np.ndarray


@dataclass
class Episode:
    success: bool
    final_error: float  # max joint error (rad) at the end
    object_error: float  # distance (m) from the object's end position to where the goal image shows it
    pose_reached: bool  # the joints alone within tolerance
    steps: int
    plan_ms: list = field(default_factory=list)
    frames: list = field(default_factory=list)  # (start, goal, end) images
    errors: list = field(default_factory=list)  # joint error after every step
    latent_dist: list = field(default_factory=list)  # latent distance to the goal before every step
    images: list = field(default_factory=list)  # every observed frame, the start included
    actions: list = field(default_factory=list)  # the command sent after each frame


def collision_free_pose(sim, rng, lo, hi, object_xy, tries: int = 1000) -> np.ndarray:
    """A configuration drawn uniformly in [lo, hi] that touches neither table nor object.

    A goal image of an arm inside the table shows a pose no controller can reach.
    """
    for _ in range(tries):
        q = rng.uniform(lo, hi)
        if sim.collision_free(q, object_xy):
            return q
    raise RuntimeError(f"no collision-free configuration in {tries} draws between {lo} and {hi}")


def shrunk_limits(sim, margin: float = 0.15):
    """The joint limits, each shrunk by `margin` of its range: where goals are drawn."""
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    return lo + margin * (hi - lo), hi - margin * (hi - lo)


def make_tasks(sim, n: int, seed: int, margin: float = 0.15, push: bool = False) -> list[GoalTask]:
    """n seeded, collision-free start/goal pairs inside the joint limits (shrunk by `margin` of the range)."""
    lo, hi = shrunk_limits(sim, margin)
    tasks = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        obs = sim.reset(seed=seed + i)
        obj = np.asarray(obs.object_xy, dtype=np.float64)
        goal_obj = obj + rng.uniform(-0.08, 0.08, 2) if push else obj
        start = collision_free_pose(sim, rng, lo, hi, obj)
        tasks.append(GoalTask(start, collision_free_pose(sim, rng, lo, hi, goal_obj), obj, goal_obj))
    return tasks


class LatentAgent:
    """Receding-horizon CEM on the world model: encode, plan, send the first action."""

    def __init__(self, model: WorldModel, planner_cfg: PlannerConfig, meta: dict, seed: int = 0):
        """meta: the checkpoint's metadata (action bounds and rate limit of the training data, joint probe)."""
        self.model = model
        low, high, step = normalised_bounds(model, meta["action_low"], meta["action_high"], meta.get("action_max_step"))
        metric = JointMetric.from_dict(meta["joint_metric"]) if "joint_metric" in meta else None
        self.planner = CEMPlanner(model, planner_cfg, low, high, seed=seed, max_step=step, metric=metric)
        self.H = model.cfg.history

    @torch.no_grad()
    def encode(self, image) -> torch.Tensor:
        return self.model.encode(preprocess(image, self.model.cfg.image_size))[0]

    def reset(self, goal_image, first_image):
        self.planner.reset()
        self.goal = self.encode(goal_image)
        self.latents = [self.encode(first_image)]
        self.actions: list[torch.Tensor] = []

    def act(self, image=None, joint_pos=None) -> np.ndarray:
        """Next joint-space action; `image` is the frame observed since the last action, `joint_pos` the
        measured joints (the rate limit's anchor before the first command)."""
        if image is not None:
            self.latents.append(self.encode(image))
        hist = torch.stack(self.latents[-self.H:])
        hist_actions = torch.stack(self.actions[-(len(hist) - 1):]) if len(hist) > 1 else torch.zeros(0, self.model.cfg.action_block)
        if self.actions:
            current = self.actions[-1][-self.model.cfg.action_dim:]
        else:
            current = None if joint_pos is None else self.model.normalize_actions(torch.as_tensor(joint_pos, dtype=torch.float32))
        result = self.planner.plan(hist, hist_actions, self.goal, current)
        self.actions.append(result.actions[0])
        return self.model.denormalize_actions(result.actions[0]).numpy()

    def goal_distance(self) -> float:
        return float((self.latents[-1] - self.goal).pow(2).sum())


class GoalSeeker:
    """The planner behind a policy's `reset(seed)` / `act(obs)`: from wherever the episode starts, towards a
    seeded collision-free goal pose. The surprise monitor watches this, not exploration, in deployment."""

    def __init__(self, sim, agent: LatentAgent):
        self.sim, self.agent = sim, agent
        self.reset()

    def reset(self, seed: int | None = None):
        self.rng, self.started = np.random.default_rng(seed), False

    def act(self, obs) -> np.ndarray:
        if self.started:
            return self.agent.act(obs.image, obs.joint_pos)
        goal = collision_free_pose(self.sim, self.rng, *shrunk_limits(self.sim), obs.object_xy)
        self.agent.reset(self.sim.render_state(goal, obs.object_xy), obs.image)
        self.started = True
        return self.agent.act(None, obs.joint_pos)


def run_episode(sim, task: GoalTask, agent: LatentAgent | None, budget: int, tolerance: float, rng=None,
                object_tolerance: float | None = None) -> Episode:
    """One goal: `agent` None runs the random baseline; `object_tolerance` (m) also scores the object's position."""
    goal_image = sim.render_state(task.goal, task.goal_object_xy)
    obs = sim.reset(joint_pos=task.start, object_xy=task.object_xy)
    start_image = obs.image
    if agent is not None:
        agent.reset(goal_image, obs.image)
    ep = Episode(False, np.inf, np.inf, False, 0, images=[start_image])
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    for step in range(budget):
        t0 = time.perf_counter()
        if agent is None:
            action = rng.uniform(lo, hi)
        else:
            action = agent.act(obs.image if step else None, obs.joint_pos)
            ep.latent_dist.append(agent.goal_distance())
        ep.plan_ms.append(1000 * (time.perf_counter() - t0))
        obs = sim.step(action)
        ep.images.append(obs.image)
        ep.actions.append(np.asarray(action, np.float32))
        ep.errors.append(float(np.abs(obs.joint_pos - task.goal).max()))
    ep.steps, ep.final_error = budget, ep.errors[-1]
    ep.object_error = float(np.linalg.norm(obs.object_xy - task.goal_object_xy))
    ep.pose_reached = ep.final_error < tolerance
    ep.success = ep.pose_reached and (object_tolerance is None or ep.object_error < object_tolerance)
    ep.frames = [start_image, goal_image, obs.image]
    return ep


def summary(episodes: list[Episode]) -> dict:
    ms = np.concatenate([e.plan_ms for e in episodes])
    return {
        "success_rate": float(np.mean([e.success for e in episodes])),
        "pose_reached_rate": float(np.mean([e.pose_reached for e in episodes])),
        "object_error_median": float(np.median([e.object_error for e in episodes])),
        "final_error_mean": float(np.mean([e.final_error for e in episodes])),
        "final_error_median": float(np.median([e.final_error for e in episodes])),
        "plan_ms_median": float(np.median(ms)),
        "plan_ms_p95": float(np.percentile(ms, 95)),
        "episodes": len(episodes),
    }
