"""Surprise: how far the observed latent of a frame is from the latent predicted for it.

The score is the squared prediction error per latent dimension divided by
`scale`, the median error on nominal data, so a nominal frame scores about 1
whatever the model. Calibration sets the threshold at a high quantile of
nominal scores; the detector trips only after `consecutive` frames in a row
exceed it, so one noisy frame does not stop an arm; a single score beyond
`instant` x the threshold trips at once, because some events (an object
knocked away) are only visible in one frame before the history catches up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


def prediction_error(predicted, observed) -> np.ndarray:
    """Mean squared error per frame over the latent dimension: (..., D) -> (...)."""
    p = torch.as_tensor(predicted, dtype=torch.float32)
    o = torch.as_tensor(observed, dtype=torch.float32)
    if p.shape != o.shape:
        raise ValueError(f"predicted latent shape {tuple(p.shape)} != observed latent shape {tuple(o.shape)}")
    return (p - o).pow(2).mean(-1).numpy()


def surprise_score(predicted, observed, scale: float = 1.0):
    """Normalised surprise of each frame: about 1 on nominal data, large when the world misbehaves."""
    score = prediction_error(predicted, observed) / scale
    return float(score) if np.ndim(score) == 0 else score


@dataclass
class SurpriseCalibration:
    scale: float  # median nominal prediction error
    threshold: float  # on the normalised score
    quantile: float
    consecutive: int
    false_trip_rate: float  # fraction of nominal frames that would trip the detector at this threshold
    instant: float = 3.0  # one score above instant x threshold trips at once

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SurpriseCalibration":
        return cls(**d)


def calibrate(nominal_errors, quantile: float = 0.999, margin: float = 1.5, consecutive: int = 2,
              episode_lengths=None, instant: float = 3.0) -> SurpriseCalibration:
    """Fit scale and threshold on the prediction errors of nominal frames.

    The threshold is `margin` x the `quantile` of normalised nominal scores: the
    margin keeps unseen nominal data (new lighting, a new day) below it.
    `episode_lengths` lets the false-trip rate respect episode boundaries.
    """
    errors = np.asarray(nominal_errors, dtype=np.float64).ravel()
    if errors.size < 20:
        raise ValueError(f"calibration needs at least 20 nominal frames, got {errors.size}")
    scale = float(np.median(errors)) or 1e-12
    scores = errors / scale
    threshold = float(np.quantile(scores, quantile) * margin)
    trips = detect_offline(scores, threshold, consecutive, episode_lengths, instant)
    return SurpriseCalibration(scale, threshold, quantile, consecutive, float(trips.mean()), instant)


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
