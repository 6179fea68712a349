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


def goal_cost(latents: torch.Tensor, goal: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance of (S, D) latents to the goal (D,): squared L2 or mean L1."""
    diff = latents.float() - goal.float()
    return diff.pow(2).sum(-1) if kind == "l2" else diff.abs().mean(-1)


def normalised_bounds(model, low, high, max_step=None):
    """Action bounds and rate limit in the robot's units (rad) -> the model's normalised units."""
    def norm(x):
        return model.normalize_actions(torch.as_tensor(x, dtype=torch.float32))

    step = None if max_step is None else torch.as_tensor(max_step, dtype=torch.float32) / model.action_std
    return norm(low), norm(high), step


class CEMPlanner:
    def __init__(self, model, cfg: PlannerConfig | None = None, action_low=None, action_high=None, seed: int = 0,
                 max_step=None):
        """action_low/high: bounds per env-step action dimension, max_step: largest change of each dimension
        from one env step to the next; all in model (normalised) units. None: unbounded."""
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
            cost = goal_cost(final, goal, cfg.cost)
            elite_cost, idx = torch.topk(cost, cfg.elites, largest=False)
            elites = candidates[idx]
            mean, std = elites.mean(0), elites.std(0).clamp(cfg.min_std, cfg.max_std)
            best = elites[0]
            costs.append(elite_cost[0].item())

        # The plan is the best sequence evaluated, not the refitted mean: its cost is known exactly.
        self.previous = best
        predicted = self.model.rollout(history, history_actions, best[None].to(self.dtype), **prefix)[0].float()
        return PlanResult(best, predicted, costs[-1], iterations, costs)
