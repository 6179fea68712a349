"""CEM must find the optimum of a latent system whose answer is known in closed form."""

from types import SimpleNamespace

import pytest
import torch

from jepa_wm.core.config import ConfigError, ModelConfig, PlannerConfig
from jepa_wm.core.model import build_model
from jepa_wm.core.planner import CEMPlanner, JointMetric


class LinearLatentSystem(torch.nn.Module):
    """z' = M z + K a: a world model whose optimal actions are known exactly."""

    def __init__(self, dim=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.M = torch.nn.Parameter(torch.eye(dim) * 0.9 + 0.05 * torch.randn(dim, dim, generator=g))
        self.K = torch.nn.Parameter(torch.eye(dim) + 0.2 * torch.randn(dim, dim, generator=g))
        self.cfg = SimpleNamespace(action_block=dim, action_dim=dim, frameskip=1, latent_dim=dim)

    @torch.no_grad()
    def rollout(self, history, history_actions, plan_actions):
        z = history[:, -1].expand(plan_actions.shape[0], -1)
        out = []
        for n in range(plan_actions.shape[1]):
            z = z @ self.M.T + plan_actions[:, n] @ self.K.T
            out.append(z)
        return torch.stack(out, dim=1)


def optimum(system, z0, goal):
    return torch.linalg.solve(system.K, goal - system.M @ z0)


def test_recovers_the_closed_form_optimum_with_horizon_one():
    system = LinearLatentSystem()
    z0, goal = torch.tensor([0.5, -0.3, 0.2]), torch.tensor([1.0, 0.4, -0.6])
    planner = CEMPlanner(system, PlannerConfig(samples=200, iterations=30, elites=20, horizon=1), seed=0)
    result = planner.plan(z0[None], torch.zeros(0, 3), goal)
    assert torch.allclose(result.actions[0], optimum(system, z0, goal), atol=0.03)
    assert result.cost < 1e-3
    # The predicted latent of the returned plan is the model's, not a guess.
    assert torch.allclose(result.predicted_latents[0], system.M @ z0 + system.K @ result.actions[0], atol=1e-5)


def test_best_cost_never_rises_and_longer_horizons_reach_the_goal():
    system = LinearLatentSystem(seed=1)
    z0, goal = torch.zeros(3), torch.tensor([2.0, -1.0, 0.5])
    planner = CEMPlanner(system, PlannerConfig(samples=300, iterations=25, elites=30, horizon=3), seed=1)
    result = planner.plan(z0[None], torch.zeros(0, 3), goal)
    assert all(b <= a + 1e-9 for a, b in zip(result.costs, result.costs[1:]))
    assert result.cost < 1e-2


def test_bounds_are_respected_and_saturate_toward_an_unreachable_goal():
    system = LinearLatentSystem()
    system.M.data, system.K.data = torch.eye(3), torch.eye(3)
    planner = CEMPlanner(system, PlannerConfig(samples=200, iterations=20, elites=20, horizon=1),
                         action_low=[-1, -1, -1], action_high=[1, 1, 1])
    result = planner.plan(torch.zeros(1, 3), torch.zeros(0, 3), torch.tensor([5.0, 0.3, -5.0]))
    a = result.actions[0]
    assert a.abs().max() <= 1.0
    assert a[0] > 0.98 and a[2] < -0.98 and abs(a[1] - 0.3) < 0.05


def test_rate_limit_keeps_every_command_within_max_step_of_the_previous():
    # An integrator z' = z + a - current is what a position-controlled joint looks like: the latent is
    # the command. The goal is 2.0 away; with max_step 0.3 three steps can cover 0.9 of it, no more.
    system = LinearLatentSystem()
    system.M.data, system.K.data = torch.zeros(3, 3), torch.eye(3)
    planner = CEMPlanner(system, PlannerConfig(samples=200, iterations=20, elites=20, horizon=3), seed=0,
                         action_low=[-5] * 3, action_high=[5] * 3, max_step=[0.3] * 3)
    current = torch.tensor([0.5, 0.0, -0.5])
    result = planner.plan(current[None], torch.zeros(0, 3), torch.tensor([2.5, 0.0, -0.5]), current)
    steps = torch.diff(torch.cat([current[None], result.actions]), dim=0)
    assert steps.abs().max() <= 0.3 + 1e-6
    # It spends the whole budget on the joint that must move and leaves the others still.
    assert torch.allclose(result.actions[-1], torch.tensor([1.4, 0.0, -0.5]), atol=0.05)


def iterations_to(costs, tol):
    return next((i + 1 for i, c in enumerate(costs) if c < tol), len(costs) + 1)


def test_warm_start_needs_fewer_iterations_than_a_cold_start():
    system = LinearLatentSystem(seed=2)
    z0, goal = torch.zeros(3), torch.tensor([1.0, 1.0, -1.0])
    cfg = PlannerConfig(samples=100, iterations=20, elites=10, horizon=4, warm_iterations=20)
    planner = CEMPlanner(system, cfg, seed=0)
    first = planner.plan(z0[None], torch.zeros(0, 3), goal)
    # Execute the first action, then replan from where it led (receding horizon).
    z1 = system.M.detach() @ z0 + system.K.detach() @ first.actions[0]
    warm = planner.plan(z1[None], torch.zeros(0, 3), goal)
    planner.reset()
    cold = planner.plan(z1[None], torch.zeros(0, 3), goal)
    tol = 0.05
    assert iterations_to(warm.costs, tol) < iterations_to(cold.costs, tol)


def test_same_seed_same_plan_on_the_real_model():
    cfg = ModelConfig.preset("tiny")
    model = build_model(cfg).eval()
    pc = PlannerConfig(samples=32, iterations=3, elites=4, horizon=3)
    hist, hist_a, goal = torch.randn(cfg.history, cfg.latent_dim), torch.randn(cfg.history - 1, 3), torch.randn(16)
    a = CEMPlanner(model, pc, seed=7).plan(hist, hist_a, goal)
    b = CEMPlanner(model, pc, seed=7).plan(hist, hist_a, goal)
    assert torch.equal(a.actions, b.actions) and a.cost == b.cost
    assert a.actions.shape == (3, cfg.action_block) and a.predicted_latents.shape == (3, cfg.latent_dim)


def test_l1_cost_and_config_validation():
    system = LinearLatentSystem()
    z0, goal = torch.tensor([0.5, -0.3, 0.2]), torch.tensor([1.0, 0.4, -0.6])
    planner = CEMPlanner(system, PlannerConfig(samples=200, iterations=30, elites=20, horizon=1, cost="l1"))
    assert torch.allclose(planner.plan(z0[None], torch.zeros(0, 3), goal).actions[0], optimum(system, z0, goal), atol=0.05)
    with pytest.raises(ConfigError, match="cost"):
        PlannerConfig(cost="l3")
    with pytest.raises(ConfigError, match="elites"):
        PlannerConfig(samples=10, elites=20)


class HumpedArm(torch.nn.Module):
    """One position-controlled joint q seen as the latent (q, 1.5 exp(-(q - 1)^2 / 0.1)): a feature that lights up
    as the arm passes q = 1, as a keypoint does when one link crosses another. The action is the next q."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(action_block=1, action_dim=1, frameskip=1, latent_dim=2)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the planner reads the device from a parameter

    @staticmethod
    def latent(q):
        return torch.stack([q, 1.5 * torch.exp(-(q - 1) ** 2 / 0.1)], -1)

    @torch.no_grad()
    def rollout(self, history, history_actions, plan_actions):
        return self.latent(plan_actions[..., 0])


def drive(planner, system, goal_q, steps=30):
    q, goal = torch.tensor([0.0]), system.latent(torch.tensor(goal_q))
    for _ in range(steps):
        q = planner.plan(system.latent(q)[None], torch.zeros(0, 1), goal, current=q).actions[0]
    return float(q)


def test_joint_metric_is_the_linear_readout_of_the_joints():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g)
    joints = z[:, :2] @ torch.tensor([[2.0, 0.0], [1.0, -1.0]]) + 0.3
    metric = JointMetric.fit(z, joints)
    assert min(metric.r2) > 0.99 and metric.weights.shape == (2, 6)
    # The probe ignores what does not carry the joints: latent directions 2..5.
    assert metric.weights[:, 2:].abs().max() < 0.05 * metric.weights[:, :2].abs().max()
    restored = JointMetric.from_dict(metric.to_dict())
    assert torch.allclose(restored.weights, metric.weights) and restored.scale == metric.scale


def test_joint_metric_carries_a_one_step_planner_over_a_hump_in_latent_distance():
    system = HumpedArm()
    q = torch.linspace(-0.5, 2.5, 301)
    metric = JointMetric.fit(system.latent(q), q[:, None])
    cfg = dict(samples=64, iterations=8, warm_iterations=3, elites=8, horizon=1)
    kwargs = dict(action_low=[-0.5], action_high=[2.5], max_step=[0.15], metric=metric)
    stalled = drive(CEMPlanner(system, PlannerConfig(**cfg), seed=0, **kwargs), system, 2.0)
    assert stalled < 0.8  # plain latent distance rises past q = 0.7: a greedy planner stops in front of it
    reached = drive(CEMPlanner(system, PlannerConfig(**cfg, joint_weight=3.0), seed=0, **kwargs), system, 2.0)
    assert abs(reached - 2.0) < 0.05
