"""Injected events for the surprise evaluation: does the monitor see the world misbehave, and how fast?

Each episode runs the exploration policy; at a seeded step an event starts:
- teleport: the object jumps to another place (a one-frame discontinuity);
- blocked_joint: a joint stops following its commands;
- frozen_camera: the camera keeps sending the same frame while the arm moves.
Scores are the online ones: the latent predicted for a frame from the last
`history` frames and the commands actually sent, against the latent observed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jepa_wm.core.model import WorldModel
from jepa_wm.core.surprise import SurpriseCalibration, SurpriseDetector
from jepa_wm.train.calibration import episode_errors

EVENTS = ("teleport", "blocked_joint", "frozen_camera")


@dataclass
class EventEpisode:
    kind: str  # "nominal" or one of EVENTS
    onset: int  # frame index at which the event is first visible (-1 for nominal)
    scores: np.ndarray  # normalised surprise of frames 1..T-1 (index i scores frame i+1)


def inject(sim, kind: str, rng):
    if kind == "teleport":
        xy = np.asarray(sim.object_xy())
        sim.teleport_object(xy + rng.choice([-1, 1], 2) * rng.uniform(0.06, 0.12, 2))
    elif kind == "blocked_joint":
        sim.block_joint(int(rng.integers(sim.n_joints)), True)
    elif kind == "frozen_camera":
        sim.freeze_camera(True)
    else:
        raise ValueError(f"unknown event {kind!r}; choose from {EVENTS}")


def record(sim, policy, steps: int, seed: int, kind: str = "nominal", onset: int = -1):
    """Frames and commands of one episode; the event (if any) is injected before step `onset` executes."""
    rng = np.random.default_rng(seed)
    obs = sim.reset(seed=seed)
    policy.reset(seed)
    frames, actions = [obs.image], []
    for t in range(steps - 1):
        if t == onset - 1 and kind != "nominal":
            inject(sim, kind, rng)
        action = policy.act(obs)
        obs = sim.step(action)
        frames.append(obs.image)
        actions.append(action)
    actions.append(actions[-1])
    return np.stack(frames), np.asarray(actions, np.float32)


@torch.no_grad()
def episode_scores(model: WorldModel, frames, actions, scale: float) -> np.ndarray:
    return episode_errors(model, frames, actions) / scale


def auroc(negatives, positives) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    neg, pos = np.sort(np.asarray(negatives)), np.asarray(positives)
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(neg) * len(pos)))


def summarise(nominal: list[EventEpisode], events: list[EventEpisode], cal: SurpriseCalibration, window: int = 2):
    """Per event: AUROC (event frames vs nominal frames), frames to detect, detection rate; and nominal stops."""
    negatives = np.concatenate([e.scores for e in nominal])
    report = {"nominal_stops": 0, "nominal_episodes": len(nominal)}
    for e in nominal:
        det = SurpriseDetector(cal.threshold, cal.consecutive, cal.instant)
        report["nominal_stops"] += any(det.update(s) for s in e.scores)
    for kind in EVENTS:
        eps = [e for e in events if e.kind == kind]
        if not eps:
            continue
        # The first `window` frames after onset: the frames a stop within 2 frames must act on.
        positives = np.concatenate([e.scores[e.onset - 1: e.onset - 1 + window] for e in eps])
        delays = []
        for e in eps:
            det = SurpriseDetector(cal.threshold, cal.consecutive, cal.instant)
            trips = [det.update(s) for s in e.scores]
            hit = next((i for i, t in enumerate(trips) if t and i >= e.onset - 1), None)
            delays.append(np.inf if hit is None else hit - (e.onset - 1) + 1)
        delays = np.array(delays)
        report[kind] = {
            "auroc": auroc(negatives, positives),
            "detected": float(np.isfinite(delays).mean()),
            "frames_to_detect_median": float(np.median(delays)),
            "frames_to_detect_max": float(delays.max()),
            "episodes": len(eps),
        }
    return report
