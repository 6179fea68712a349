"""Shapes, causality and the KV-cached rollout of the world model."""

import numpy as np
import pytest
import torch

from jepa_wm.core.config import ConfigError, ModelConfig
from jepa_wm.core.model import build_model, flops_per_token, preprocess


def randomised(cfg):
    """A model with PyTorch's default Linear init, AdaLN included, so actions matter (as after training)."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    return model


@pytest.mark.parametrize("preset", ["tiny", "sim"])
def test_shapes_and_dtypes(preset):
    cfg = ModelConfig.preset(preset)
    model = randomised(cfg)
    frames = np.random.randint(0, 255, (2, 5, 48, 48, 3), dtype=np.uint8)
    px = preprocess(frames, cfg.image_size)
    assert px.shape == (10, 3, cfg.image_size, cfg.image_size) and px.dtype == torch.float32
    assert -1.0 <= px.min() and px.max() <= 1.0
    z = model.encode(px).view(2, 5, -1)
    assert z.shape == (2, 5, cfg.latent_dim) and z.dtype == torch.float32
    pred = model.predict(z, torch.randn(2, 5, cfg.action_block))
    assert pred.shape == z.shape


def test_lewm_preset_has_the_published_size():
    model = build_model(ModelConfig.preset("lewm"))
    assert 17.5e6 < model.num_parameters() < 18.5e6
    assert flops_per_token(model.cfg) > 1e7


def test_predictor_is_causal_in_latents_and_actions():
    cfg = ModelConfig.preset("tiny")
    model = randomised(cfg)
    z, a = torch.randn(3, 6, cfg.latent_dim), torch.randn(3, 6, cfg.action_block)
    ref = model.predict(z, a)
    z2, a2 = z.clone(), a.clone()
    z2[:, 4:] += 5.0
    a2[:, 4:] -= 5.0
    out = model.predict(z2, a2)
    assert torch.allclose(out[:, :4], ref[:, :4], atol=1e-6)
    assert (out[:, 4:] - ref[:, 4:]).norm() > 0.01 * ref[:, 4:].norm()


def test_actions_change_predictions():
    cfg = ModelConfig.preset("tiny")
    model = randomised(cfg)
    z = torch.randn(1, 3, cfg.latent_dim)
    a = torch.randn(1, 3, cfg.action_block)
    out, moved = model.predict(z, a), model.predict(z, a + 1.0)
    assert (out - moved).norm() > 0.01 * out.norm()


@pytest.mark.parametrize("preset", ["tiny", "sim"])
def test_cached_rollout_equals_recomputing_the_sequence(preset):
    cfg = ModelConfig.preset(preset)
    model = randomised(cfg)
    H, N, S = cfg.history, 5, 6
    hist, hist_a = torch.randn(1, H, cfg.latent_dim), torch.randn(1, H - 1, cfg.action_block)
    plan = torch.randn(S, N, cfg.action_block)
    out = model.rollout(hist, hist_a, plan)
    z, ref = hist.expand(S, -1, -1), []
    with torch.no_grad():
        for n in range(N):
            acts = torch.cat([hist_a.expand(S, -1, -1), plan[:, : n + 1]], dim=1)
            nxt = model.predict(z, acts)[:, -1:]
            ref.append(nxt)
            z = torch.cat([z, nxt], dim=1)
    assert out.shape == (S, N, cfg.latent_dim)
    assert torch.allclose(out, torch.cat(ref, dim=1), atol=1e-5)


def test_action_normalisation_round_trips_per_joint_over_frameskip():
    cfg = ModelConfig.preset("tiny", frameskip=2)
    model = build_model(cfg)
    model.action_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    model.action_std.copy_(torch.tensor([2.0, 0.5, 1.0]))
    a = torch.tensor([[3.0, -2.0, 0.5, 1.0, -1.5, 1.5]])
    n = model.normalize_actions(a)
    assert torch.allclose(n, torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(model.denormalize_actions(n), a)


def test_invalid_configs_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="patch_size"):
        ModelConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"image_size": 64, "depth": 3})
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), dtype=np.float32), 8)
