"""Surprise: how far the observed latent of a frame is from the latent predicted for it.

The score is the squared prediction error per latent dimension divided by
`scale`, the median error on nominal data, so a nominal frame scores about 1
whatever the model. With a `whitening` matrix (the inverse covariance of
nominal residuals, shrunk towards a multiple of the identity) the error is the
squared Mahalanobis distance per dimension instead: nominal prediction errors
are large along a few directions (an object sliding after a push) and tiny
along the rest, where a jammed joint or a frozen camera shows first. It needs
nominal data of the kind it will see: calibrated on exploration data alone it
stopped nominal closed-loop planning, calibrated with closed-loop runs too
(`jepa-wm calibrate --whiten`, as the shipped model is) it caught 35-45% of the
injected events within two frames where the plain score caught none
(models/README.md). Training calibrates without it (`calibration.whiten`).

Calibration sets the threshold at a high quantile of nominal scores; the
detector trips after `consecutive` frames in a row exceed it, and a single
score beyond `instant` x the threshold trips at once.

The score sees a frozen camera or a jammed joint only as a missing motion,
which a slow arm makes small; core.checks catches both directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


def prediction_error(predicted, observed, whitening=None) -> np.ndarray:
    """Mean squared error per frame over the latent dimension, (..., D) -> (...); whitened if given (D, D)."""
    p = torch.as_tensor(predicted, dtype=torch.float32)
    o = torch.as_tensor(observed, dtype=torch.float32)
    if p.shape != o.shape:
        raise ValueError(f"predicted latent shape {tuple(p.shape)} != observed latent shape {tuple(o.shape)}")
    return residual_error(p - o, whitening)


def residual_error(residuals, whitening=None) -> np.ndarray:
    """(..., D) residuals -> (...) mean squared error, or r^T W r / D with a whitening matrix W."""
    r = torch.as_tensor(residuals, dtype=torch.float32)
    if whitening is None:
        return r.pow(2).mean(-1).numpy()
    w = torch.as_tensor(np.asarray(whitening), dtype=torch.float32)
    if w.shape != (r.shape[-1], r.shape[-1]):
        raise ValueError(f"whitening matrix shape {tuple(w.shape)} does not match latent dimension {r.shape[-1]}")
    return ((r @ w) * r).sum(-1).div(r.shape[-1]).numpy()


def surprise_score(predicted, observed, scale: float = 1.0, whitening=None):
    """Normalised surprise of each frame: about 1 on nominal data, large when the world misbehaves."""
    score = prediction_error(predicted, observed, whitening) / scale
    return float(score) if np.ndim(score) == 0 else score


def fit_whitening(residuals, shrinkage: float = 0.01) -> np.ndarray:
    """Inverse covariance of nominal residuals (N, D), shrunk towards a scaled identity.

    The shrinkage is at least D / N, so a short calibration set cannot make
    the score blow up along directions it happened not to see.
    """
    r = np.asarray(residuals, dtype=np.float64)
    n, d = r.shape
    if n < 2 * d:
        raise ValueError(f"whitening a {d}-dim latent needs at least {2 * d} nominal frames, got {n}")
    cov = np.cov(r, rowvar=False)
    lam = min(1.0, max(shrinkage, d / n))
    cov = (1 - lam) * cov + lam * np.trace(cov) / d * np.eye(d)
    return np.linalg.inv(cov)


MIN_NOMINAL_FRAMES = 20  # scored frames a calibration needs at least: a quantile of fewer says little


@dataclass
class SurpriseCalibration:
    scale: float  # median nominal prediction error
    threshold: float  # on the normalised score
    quantile: float
    consecutive: int
    false_trip_rate: float  # fraction of nominal frames that would trip the detector at this threshold
    instant: float = 3.0  # one score above instant x threshold trips at once
    whitening: list | None = None  # (D, D) inverse nominal residual covariance; None: plain mean squared error

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SurpriseCalibration":
        return cls(**d)


def calibrate(nominal_errors, quantile: float = 0.999, margin: float = 1.5, consecutive: int = 2,
              episode_lengths=None, instant: float = 3.0, whitening=None) -> SurpriseCalibration:
    """Fit scale and threshold on the prediction errors of nominal frames.

    The threshold is `margin` x the `quantile` of normalised nominal scores: the
    margin keeps unseen nominal data (new lighting, a new day) below it.
    `episode_lengths` lets the false-trip rate respect episode boundaries;
    `whitening` is stored with the calibration when the errors were whitened.
    """
    errors = np.asarray(nominal_errors, dtype=np.float64).ravel()
    if errors.size < MIN_NOMINAL_FRAMES:
        raise ValueError(f"calibration needs at least {MIN_NOMINAL_FRAMES} nominal frames, got {errors.size}")
    scale = float(np.median(errors)) or 1e-12
    scores = errors / scale
    threshold = float(np.quantile(scores, quantile) * margin)
    trips = detect_offline(scores, threshold, consecutive, episode_lengths, instant)
    w = None if whitening is None else np.asarray(whitening, dtype=float).tolist()
    return SurpriseCalibration(scale, threshold, quantile, consecutive, float(trips.mean()), instant, w)


def frame_spacing_problem(stamps_ns, prediction_dt: float, tolerance: float) -> str:
    """Why predictions `prediction_dt` s ahead of a frame cannot meet a later frame from a camera stamping these
    frames ("" if they can, or too few frames to tell): its period is not close to a divisor of prediction_dt (a
    5 Hz camera for 0.1 s steps), so every prediction goes unscored."""
    gaps = np.diff(np.asarray(stamps_ns, dtype=np.int64)) / 1e9
    gaps = gaps[gaps > 0]
    if len(gaps) < 5:
        return ""
    period = float(np.median(gaps))
    k = max(1, round(prediction_dt / period))  # the frame nearest the predicted time
    if abs(prediction_dt - k * period) <= tolerance:
        return ""
    return (f"camera frames come every {period:.3f} s (median), so no frame lies within match_tolerance "
            f"{tolerance:g} s of prediction_dt {prediction_dt:g} s after another and no prediction can be scored: "
            f"run the camera at a rate whose period divides {prediction_dt:g} s, or raise match_tolerance")


def detect_offline(scores, threshold: float, consecutive: int, episode_lengths=None, instant: float = 3.0) -> np.ndarray:
    """Run a fresh detector over each episode of scores; returns a bool per frame (tripped at that frame)."""
    scores = np.asarray(scores, dtype=np.float64)
    lengths = [len(scores)] if episode_lengths is None else list(episode_lengths)
    out, start = [], 0
    for n in lengths:
        det = SurpriseDetector(threshold, consecutive, instant)
        out.extend(det.update(s) for s in scores[start:start + n])
        start += n
    return np.array(out, dtype=bool)


class SurpriseDetector:
    """Trips after `consecutive` scores in a row above the threshold, or one above instant x threshold."""

    def __init__(self, threshold: float, consecutive: int = 2, instant: float = 3.0):
        if threshold <= 0 or consecutive < 1 or instant < 1:
            raise ValueError(
                f"need threshold > 0, consecutive >= 1 and instant >= 1, got {threshold}, {consecutive}, {instant}"
            )
        self.threshold, self.consecutive, self.instant = threshold, consecutive, instant
        self.run = 0

    def update(self, score: float) -> bool:
        # A NaN score (a broken frame or model) counts as surprising: never as nominal.
        self.run = self.run + 1 if not score <= self.threshold else 0
        return self.run >= self.consecutive or not score <= self.instant * self.threshold

    def reset(self):
        self.run = 0
