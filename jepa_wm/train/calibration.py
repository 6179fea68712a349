"""One-step prediction errors over whole episodes, and the surprise calibration built on them.

This is what the deployed pair does online: the planner predicts the latent of
the next frame from the last `history` latents and the action sent, the
monitor compares it with the latent it observes. Calibration runs the same
computation offline on nominal episodes.
"""

from __future__ import annotations

import numpy as np
import torch

from jepa_wm.core.model import WorldModel, preprocess
from jepa_wm.core.surprise import SurpriseCalibration, calibrate, fit_whitening, residual_error


@torch.no_grad()
def encode_frames(model: WorldModel, frames, batch: int = 256) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> latents (T, D)."""
    model.eval()
    out = [model.encode(preprocess(frames[i:i + batch], model.cfg.image_size)) for i in range(0, len(frames), batch)]
    return torch.cat(out)


def latent_steps(model: WorldModel, frames, actions):
    """Subsample an episode at the model's frameskip: frames (T',...) and action blocks (T', k*A)."""
    k = model.cfg.frameskip
    n = len(frames) // k
    return frames[: n * k: k], np.asarray(actions[: n * k], np.float32).reshape(n, k * actions.shape[-1])


@torch.no_grad()
def one_step_predictions(model: WorldModel, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """For t = 1..T-1, the latent of frame t predicted from frames max(0, t-H)..t-1 and their actions."""
    H, T = model.cfg.history, latents.shape[0]
    preds = [model.predict(latents[None, :t], actions[None, :t])[0, -1] for t in range(1, min(H, T))]
    if T > H:  # full windows, batched
        z = latents.unfold(0, H, 1)[: T - H].permute(0, 2, 1)  # (T-H, H, D)
        a = actions.unfold(0, H, 1)[: T - H].permute(0, 2, 1)
        preds.extend(model.predict(z, a)[:, -1])
    return torch.stack(preds) if preds else latents[:0]


def scored_frames(length: int, frameskip: int) -> int:
    """How many residuals episode_residuals gives for an episode of `length` frames: one per latent step but the
    first. Lets callers check a calibration has enough frames before training or simulating anything."""
    return max(0, length // frameskip - 1)


def episode_residuals(model: WorldModel, frames, actions) -> np.ndarray:
    """Per-frame prediction residuals (T'-1, D), predicted minus observed, at the model's frameskip."""
    frames, blocks = latent_steps(model, frames, actions)
    z = encode_frames(model, frames)
    return (one_step_predictions(model, z, model.normalize_actions(torch.from_numpy(blocks))) - z[1:]).numpy()


def episode_errors(model: WorldModel, frames, actions, whitening=None) -> np.ndarray:
    """Per-frame prediction errors (T'-1,) of one episode, whitened if a matrix is given."""
    return residual_error(episode_residuals(model, frames, actions), whitening)


def calibrate_model(model: WorldModel, episodes, quantile=0.999, margin=1.5, consecutive=2,
                    whiten: bool = False) -> SurpriseCalibration:
    """Surprise calibration on nominal episodes (objects with .frames and .actions)."""
    residuals = [episode_residuals(model, ep.frames, ep.actions) for ep in episodes]
    return calibrate_residuals(residuals, quantile, margin, consecutive, whiten)


def calibrate_residuals(residuals, quantile=0.999, margin=1.5, consecutive=2, whiten: bool = False) -> SurpriseCalibration:
    """Surprise calibration on per-episode residuals (each (T, D)).

    With `whiten`, scores are Mahalanobis distances when there are enough
    frames for a covariance (2 x the latent dimension), else plain squared errors.
    """
    stacked = np.concatenate(residuals)
    w = fit_whitening(stacked) if whiten and len(stacked) >= 2 * stacked.shape[1] else None
    errors = [residual_error(r, w) for r in residuals]
    return calibrate(np.concatenate(errors), quantile, margin, consecutive, [len(e) for e in errors], whitening=w)
