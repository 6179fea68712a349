"""Validation metrics that say whether a world model is usable, without a decoder.

- prediction error: the training term on held-out clips;
- SIGReg statistic of the latents (about 1 for an isotropic Gaussian);
- effective rank of the latents (collapse shows up here first);
- linear probe R^2: how much of the joint angles a linear map reads from a latent
  (LeWorldModel's physical-quantity probe).
"""

from __future__ import annotations

import numpy as np
import torch


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred latents (N, D): 1 = collapsed, D = isotropic."""
    s = torch.linalg.svdvals((z - z.mean(0)).float())
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def linear_probe_r2(train_z, train_y, val_z, val_y, ridge: float = 1e-3, per_target: bool = False):
    """Fit ridge regression latents -> targets on train; R^2 on val, mean over targets (or one per target)."""
    def design(z):
        z = np.asarray(z, dtype=np.float64)
        return np.hstack([z, np.ones((len(z), 1))])

    X, Y = design(train_z), np.asarray(train_y, dtype=np.float64)
    W = np.linalg.solve(X.T @ X + ridge * len(X) * np.eye(X.shape[1]), X.T @ Y)
    pred, y = design(val_z) @ W, np.asarray(val_y, dtype=np.float64)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0).clip(min=1e-12)
    r2 = 1.0 - ss_res / ss_tot
    return r2.tolist() if per_target else float(np.mean(r2))
