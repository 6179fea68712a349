"""Cross-Entropy Method over the predictor, receding horizon, warm-started.

Each iteration samples `samples` action sequences around a Gaussian
(mean, std), imagines their latents with one batched, KV-cached rollout, and
refits the Gaussian to the `elites` with the lowest goal cost. The best
sequence so far and the current mean are always candidates, so the best cost
never rises between iterations. After a solve, `plan` remembers the solution; the next call
starts from it shifted by one step, with fewer iterations (`warm_iterations`).

Every candidate is projected onto what the arm can do and the model has seen:
inside the action bounds, and (with `max_step`) each command within max_step
of the one before it, starting from the command in force now. Without the rate
limit CEM happily proposes jumps across the workspace that no training clip
contains, and the predictor's answer to those is a guess.

The goal cost is the squared latent distance, plus (with a `JointMetric` and
`joint_weight` > 0) the same distance seen through a linear probe from latents
to joint angles. Plain latent distance can rise on the way to a goal (a link
hides another, a keypoint jumps), and a one-step planner stops in front of
such a hump; the probe's directions change monotonically with the arm's pose.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from jepa_wm.core.config import PlannerConfig


@dataclass
class PlanResult:
    actions: torch.Tensor  # (horizon, A) in model (normalised) action space
    predicted_latents: torch.Tensor  # (horizon, D): the latent expected after each action
    cost: float
    iterations: int
    costs: list  # best cost after each iteration


@dataclass
class JointMetric:
    """Latent directions that carry the arm's configuration: a ridge probe from latents to standardised joints.

    `scale` makes the probe term's mean over random pairs of training frames equal
    to the plain squared latent distance's, so `joint_weight` is a ratio.
    """

    weights: torch.Tensor  # (J, D)
    scale: float
    r2: list  # per joint, on the frames it was fitted on

    @classmethod
    def fit(cls, latents: torch.Tensor, joints: torch.Tensor, ridge: float = 1e-3, seed: int = 0) -> "JointMetric":
        z = latents.double() - latents.double().mean(0)
        q = joints.double() - joints.double().mean(0)
        q = q / q.std(0).clamp_min(1e-6)
        w = torch.linalg.solve(z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype), z.T @ q).T
        r2 = 1 - (z @ w.T - q).pow(2).mean(0) / q.var(0, correction=0)
        pairs = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
        d = z[pairs] - z
        scale = d.pow(2).sum(-1).mean() / (d @ w.T).pow(2).sum(-1).mean().clamp_min(1e-12)
        return cls(w.float(), float(scale), r2.tolist())

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "scale": self.scale, "r2": self.r2}

    @classmethod
    def from_dict(cls, d: dict) -> "JointMetric":
        return cls(torch.tensor(d["weights"], dtype=torch.float32), float(d["scale"]), list(d.get("r2", [])))


def goal_cost(latents: torch.Tensor, goal: torch.Tensor, kind: str, metric: JointMetric | None = None,
              joint_weight: float = 0.0) -> torch.Tensor:
    """Distance of (S, D) latents to the goal (D,): squared L2 or mean L1, plus the weighted joint-probe term."""
    diff = latents.float() - goal.float()
    cost = diff.pow(2).sum(-1) if kind == "l2" else diff.abs().mean(-1)
    if metric is not None and joint_weight > 0:
        cost = cost + joint_weight * metric.scale * (diff @ metric.weights.to(diff.device).T).pow(2).sum(-1)
    return cost


def normalised_bounds(model, low, high, max_step=None):
    """Action bounds and rate limit in the robot's units (rad) -> the model's normalised units."""
    def norm(x):
        return model.normalize_actions(torch.as_tensor(x, dtype=torch.float32))

    step = None if max_step is None else torch.as_tensor(max_step, dtype=torch.float32) / model.action_std
    return norm(low), norm(high), step


class CEMPlanner:
    def __init__(self, model, cfg: PlannerConfig | None = None, action_low=None, action_high=None, seed: int = 0,
                 max_step=None, metric: JointMetric | None = None):
        """action_low/high: bounds per env-step action dimension, max_step: largest change of each dimension
        from one env step to the next; all in model (normalised) units. None: unbounded.
        metric: the checkpoint's joint probe, used when cfg.joint_weight > 0."""
        self.cfg = cfg or PlannerConfig()
        mcfg = model.cfg
        self.A, self.D, self.device = mcfg.action_block, mcfg.latent_dim, next(model.parameters()).device
        self.dtype = torch.bfloat16 if self.cfg.dtype == "bfloat16" else torch.float32
        # A private reduced-precision copy: casting weights once beats autocast's per-call casts.
        self.model = model if self.dtype == torch.float32 else copy.deepcopy(model).to(self.dtype).eval()
        inf = torch.full((mcfg.action_dim,), float("inf"))
        low = torch.as_tensor(action_low, dtype=torch.float32) if action_low is not None else -inf
        high = torch.as_tensor(action_high, dtype=torch.float32) if action_high is not None else inf
        self.low = low.repeat(mcfg.frameskip).to(self.device)
        self.high = high.repeat(mcfg.frameskip).to(self.device)
        self.action_dim = mcfg.action_dim
        self.max_step = None if max_step is None else torch.as_tensor(max_step, dtype=torch.float32).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.previous: torch.Tensor | None = None
        self.metric = None if metric is None else JointMetric(metric.weights.to(self.device), metric.scale, metric.r2)

    def reset(self):
        """Forget the warm start (new goal, or control handed back after a stop)."""
        self.previous = None

    def _clamp(self, actions):
        return torch.maximum(torch.minimum(actions, self.high), self.low)

    def _feasible(self, actions, current):
        """Project (..., N, A) sequences onto the bounds and the per-step rate limit from `current`."""
        actions = self._clamp(actions)
        if self.max_step is None or current is None:
            return actions
        steps = actions.reshape(*actions.shape[:-2], -1, self.action_dim)  # env steps, frameskip unrolled
        prev, out = current, []
        for t in range(steps.shape[-2]):
            prev = torch.minimum(torch.maximum(steps[..., t, :], prev - self.max_step), prev + self.max_step)
            out.append(prev)
        return self._clamp(torch.stack(out, -2).reshape(actions.shape))

    @torch.no_grad()
    def plan(self, history, history_actions, goal, current=None) -> PlanResult:
        """history (H, D) observed latents, history_actions (H-1, A) normalised, goal (D,) latent.

        current (action_dim,) normalised: the command in force now (the measured position before the
        first command). It anchors the rate limit and the cold start, which begins by holding still.
        Default: the last env step of history_actions, if any.
        """
        cfg, N, A = self.cfg, self.cfg.horizon, self.A
        if current is None and len(history_actions):
            current = history_actions[-1, -self.action_dim:]
        if current is not None:
            current = torch.as_tensor(current, dtype=torch.float32).to(self.device)
        history = history.to(self.device, self.dtype)[None]
        history_actions = history_actions.to(self.device, self.dtype).reshape(1, -1, A)
        goal = goal.to(self.device)

        std = torch.full((N, A), cfg.init_std, device=self.device)
        if self.previous is None:
            hold = current.repeat(N, A // self.action_dim) if current is not None else torch.zeros(N, A, device=self.device)
            mean, iterations = hold, cfg.iterations
        else:  # receding horizon: drop the executed step, repeat the last one
            mean = torch.cat([self.previous[1:], self.previous[-1:]])
            std = std * cfg.warm_std
            iterations = cfg.warm_iterations
        best = mean = self._feasible(mean, current)

        # The observed prefix is the same for every candidate and iteration: once per plan.
        observe = getattr(self.model, "observe", None)
        prefix = {"prefix": observe(history, history_actions)} if observe is not None else {}
        costs = []
        for _ in range(iterations):
            noise = torch.randn(max(cfg.samples - 2, 0), N, A, device=self.device, generator=self.generator)
            candidates = torch.cat([best[None], mean[None], self._feasible(mean + std * noise, current)])[: cfg.samples]
            final = self.model.rollout(history, history_actions, candidates.to(self.dtype), **prefix)[:, -1]
            cost = goal_cost(final, goal, cfg.cost, self.metric, cfg.joint_weight)
            elite_cost, idx = torch.topk(cost, cfg.elites, largest=False)
            elites = candidates[idx]
            mean, std = elites.mean(0), elites.std(0).clamp(cfg.min_std, cfg.max_std)
            best = elites[0]
            costs.append(elite_cost[0].item())

        # The plan is the best sequence evaluated, not the refitted mean: its cost is known exactly.
        self.previous = best
        predicted = self.model.rollout(history, history_actions, best[None].to(self.dtype), **prefix)[0].float()
        return PlanResult(best, predicted, costs[-1], iterations, costs)
