"""SIGReg must separate an isotropic Gaussian from the ways latents collapse, and its gradient must undo collapse."""

import torch

from jepa_wm.core.sigreg import epps_pulley_weights, jepa_loss, random_directions, sigreg
from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import build_model

T, B, D = 4, 512, 32


def stat(z, step=0):
    return sigreg(z, step=step, num_directions=256).item()


def test_weights_are_trapezoid_on_0_3_with_17_nodes():
    t, phi0, w = epps_pulley_weights()
    assert len(t) == 17 and t[0] == 0 and abs(t[-1] - 3.0) < 1e-6
    dt = 3.0 / 16
    assert torch.allclose(w[0], dt * phi0[0]) and torch.allclose(w[5], 2 * dt * phi0[5])


def test_directions_are_unit_fresh_per_step_and_shared_across_ranks():
    a, b, c = random_directions(D, 64, 3), random_directions(D, 64, 3), random_directions(D, 64, 4)
    assert torch.allclose(a.norm(dim=0), torch.ones(64), atol=1e-5)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_gaussian_is_near_null_and_every_collapse_is_far():
    torch.manual_seed(0)
    g = torch.randn(T, B, D)
    null = stat(g)
    # Under N(0, I), E[B((C - phi0)^2 + S^2)] = 1 - phi0^2 at every node, whatever the batch size.
    t, phi0, w = epps_pulley_weights()
    expected = (w * (1 - phi0**2)).sum().item()
    assert abs(null - expected) < 0.2 * expected
    assert abs(stat(torch.randn(T, 64, D)) - expected) < 0.3 * expected
    collapsed = torch.zeros(T, B, D) + 0.01 * torch.randn(T, B, D)
    shifted = g + 1.0
    scaled = 3.0 * g
    low_rank = torch.randn(T, B, 2) @ torch.randn(2, D) / 2**0.5
    for name, z in {"collapsed": collapsed, "shifted": shifted, "scaled": scaled, "low_rank": low_rank}.items():
        assert stat(z) > 10 * null, name


def test_linear_in_batch_for_a_fixed_departure():
    torch.manual_seed(1)
    small, large = stat(2 * torch.randn(T, 256, D)), stat(2 * torch.randn(T, 1024, D))
    assert 3.0 < large / small < 5.0


def test_gradient_alone_uncollapses_embeddings():
    torch.manual_seed(2)
    base = torch.randn(B, 2) @ torch.randn(2, D)  # rank 2
    z = torch.nn.Parameter(0.1 * base + 0.001 * torch.randn(B, D))
    opt = torch.optim.Adam([z], lr=0.1)

    def eff_rank(x):
        s = torch.linalg.svdvals(x - x.mean(0))
        p = s / s.sum()
        return torch.exp(-(p * p.clamp_min(1e-12).log()).sum()).item()

    def cov_err(x):
        return (torch.cov(x.T) - torch.eye(D)).norm().item()

    rank0, err0 = eff_rank(z.detach()), cov_err(z.detach())
    for step in range(200):
        opt.zero_grad()
        sigreg(z[None], step=step, num_directions=256).backward()
        opt.step()
    assert eff_rank(z.detach()) > 4 * rank0
    assert cov_err(z.detach()) < 0.5 * err0


def test_objective_trains_and_reports_both_terms():
    torch.manual_seed(3)
    cfg = ModelConfig.preset("tiny")
    model = build_model(cfg)
    pixels = torch.randn(4, cfg.clip_len, 3, cfg.image_size, cfg.image_size)
    actions = torch.randn(4, cfg.clip_len, cfg.action_block)
    out = jepa_loss(model, pixels, actions, lam=0.1, num_directions=64)
    assert set(out) == {"loss", "pred", "sigreg"}
    assert torch.allclose(out["loss"], out["pred"] + 0.1 * out["sigreg"])
    out["loss"].backward()
    enc_grad = model.encoder.patch.weight.grad
    pred_grad = model.predictor.blocks[0].ada[1].weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0
    assert pred_grad is not None and pred_grad.abs().sum() > 0  # AdaLN-zero still learns the action
