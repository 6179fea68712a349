"""Validation metrics that say whether a world model is usable, without a decoder.

- prediction error: the training term on held-out clips;
- SIGReg statistic of the latents (about 1.05 for an isotropic Gaussian, whatever the number of samples);
- effective rank of the latents (collapse shows up here first);
- linear probe R^2: how much of the joint angles a linear map reads from a latent
  (LeWorldModel's physical-quantity probe), and of a tracked object's position.
"""

from __future__ import annotations

import numpy as np
import torch


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred latents (N, D): 1 = collapsed, D = isotropic."""
    s = torch.linalg.svdvals((z - z.mean(0)).float())
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def _ridge_probe(train_z, train_y, val_z, val_y, ridge: float):
    """Fit ridge regression latents -> targets on train; (squared error, variance) sums per target on val."""
    def design(z):
        z = np.asarray(z, dtype=np.float64)
        return np.hstack([z, np.ones((len(z), 1))])

    X, Y = design(train_z), np.asarray(train_y, dtype=np.float64)
    W = np.linalg.solve(X.T @ X + ridge * len(X) * np.eye(X.shape[1]), X.T @ Y)
    pred, y = design(val_z) @ W, np.asarray(val_y, dtype=np.float64)
    return ((y - pred) ** 2).sum(0), ((y - y.mean(0)) ** 2).sum(0)


def linear_probe_r2(train_z, train_y, val_z, val_y, ridge: float = 1e-3, per_target: bool = False):
    """Fit ridge regression latents -> targets on train; R^2 on val, mean over targets (or one per target)."""
    ss_res, ss_tot = _ridge_probe(train_z, train_y, val_z, val_y, ridge)
    r2 = 1.0 - ss_res / ss_tot.clip(min=1e-12)
    return r2.tolist() if per_target else float(np.mean(r2))


def object_probe_r2(train_z, train_pos, val_z, val_pos, ridge: float = 1e-3) -> float | None:
    """The share of an object's position variance (x, y, z pooled) that a linear probe reads from the latent, on val.

    Pooled, so a coordinate the object barely moves along (a puck's height) weighs what it moves. Frames where the
    object is far from where it usually is (farther from the training median than 5x the 90th percentile distance:
    it fell off the table, or the tracker glitched) are left out. None when it never moved 1 mm.
    """
    train_pos, val_pos = np.asarray(train_pos, np.float64), np.asarray(val_pos, np.float64)
    centre = np.median(train_pos, 0)
    radius = 5 * np.quantile(np.linalg.norm(train_pos - centre, axis=1), 0.9)
    keep_t = np.linalg.norm(train_pos - centre, axis=1) <= radius
    keep_v = np.linalg.norm(val_pos - centre, axis=1) <= radius
    if radius < 1e-3 or keep_v.sum() < 2 or val_pos[keep_v].std(0).max() < 1e-3:
        return None
    ss_res, ss_tot = _ridge_probe(np.asarray(train_z)[keep_t], train_pos[keep_t], np.asarray(val_z)[keep_v],
                                  val_pos[keep_v], ridge)
    return float(1.0 - ss_res.sum() / ss_tot.sum())
