"""Injected events for the surprise evaluation: does the monitor see the world misbehave, and how fast?

Each episode runs the exploration policy; at a seeded step an event starts:
- teleport: the object jumps to another place on the table (a one-frame
  discontinuity); skipped in a scene without an object;
- blocked_joint: a joint stops following its commands;
- frozen_camera: the camera keeps sending the same frame while the arm moves.
An event counts from the first frame in which it is visible: a jammed joint
that is not asked to move, or a frozen camera looking at an arm at rest, looks
exactly like a working one. Blocked: the command for that joint has moved more
than VISIBLE rad from where it jammed; frozen: some joint has moved more than
VISIBLE rad since the last real frame; teleport: at once.
Scores are the online ones: the latent predicted for a frame from the last
`history` frames and the commands actually sent, against the latent observed.
Deployed, two model-free checks stand beside the score (core.checks): the
monitor's frozen-frame check and the gate's stuck-joint check; `summarise`
reports the score alone and the three together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jepa_wm.core.checks import FrozenFrameCheck, StuckJointCheck
from jepa_wm.core.model import WorldModel
from jepa_wm.core.surprise import SurpriseCalibration, detect_offline
from jepa_wm.train.calibration import episode_errors

EVENTS = ("teleport", "blocked_joint", "frozen_camera")
VISIBLE = 0.05  # rad
SWEEP = (1.0, 0.75, 0.5, 0.3)  # fractions of the calibrated threshold that `summarise` also reports
TELEPORT_STEP = (0.06, 0.12)  # m: a teleport moves the object this far along each axis, in a random sense


@dataclass
class EventEpisode:
    kind: str  # "nominal" or one of EVENTS
    onset: int  # frame index at which the event is first visible (-1: nominal, or never visible)
    scores: np.ndarray  # normalised surprise of frames 1..T-1 (index i scores frame i+1)
    checks: np.ndarray | None = None  # where the model-free checks trip, frames 1..T-1; None: not run


def skipped_events(sim) -> dict[str, str]:
    """The events this scene cannot stage, each with the reason."""
    return {} if sim.has_object else {"teleport": "the scene has no object to teleport"}


def inject(sim, kind: str, rng):
    """Start the event; returns visible(obs, action) -> bool for the frame that action leads to."""
    q0 = sim.joint_state()[0].copy()
    if kind == "teleport":
        # 6-12 cm along each axis (the protocol of the model card's numbers), but on the table, as the simulator
        # node's ~/teleport_object keeps it: an object dropped off it falls out of view, which is another event.
        here = np.asarray(sim.object_xy())
        step = rng.choice([-1, 1], 2) * rng.uniform(*TELEPORT_STEP, 2)
        xy = here + step if not sim.table_problem(here + step) else sim.random_jump(np.linalg.norm(step), rng)
        if xy is None:  # no direction keeps it on the table: no jump, counted as never visible
            return lambda obs, action: False
        sim.teleport_object(xy)
        return lambda obs, action: True
    if kind == "blocked_joint":
        j = int(rng.integers(sim.n_joints))
        sim.block_joint(j, True)
        return lambda obs, action: abs(action[j] - q0[j]) > VISIBLE
    if kind == "frozen_camera":
        sim.freeze_camera(True)
        return lambda obs, action: np.abs(obs.joint_pos - q0).max() > VISIBLE
    raise ValueError(f"unknown event {kind!r}; choose from {EVENTS}")


def record(sim, policy, steps: int, seed: int, kind: str = "nominal", start: int = -1):
    """Frames, commands, visible onset and measured joints of one episode; the event is injected before
    step `start` executes.

    The onset is the index of the first frame in which the event is visible (-1 for nominal episodes
    and for events that never became visible).
    """
    rng = np.random.default_rng(seed)
    obs = sim.reset(seed=seed)
    policy.reset(seed)
    frames, joints, actions, visible, onset = [obs.image], [obs.joint_pos], [], None, -1
    for t in range(steps - 1):
        if t == start - 1 and kind != "nominal":
            visible = inject(sim, kind, rng)
        action = policy.act(obs)
        obs = sim.step(action)
        frames.append(obs.image)
        joints.append(obs.joint_pos)
        actions.append(action)
        if visible is not None and onset < 0 and visible(obs, action):
            onset = t + 1
    actions.append(actions[-1])
    return np.stack(frames), np.asarray(actions, np.float32), onset, np.stack(joints)


def check_trips(frames, joints, actions, frozen: FrozenFrameCheck | None, stuck: StuckJointCheck | None) -> np.ndarray:
    """Where the checks, reset first, trip over an episode (the frozen-frame check on every frame, the stuck-joint
    check on every command with the joints measured before it), for frames 1..T-1 (indexed like the scores)."""
    for check in (frozen, stuck):
        if check is not None:
            check.reset()
    out = []
    for f, q, a in zip(frames, joints, actions):
        hit = frozen is not None and frozen.update(f, dict(enumerate(q)))
        out.append((stuck is not None and stuck.update(a, q)) or hit)
    return np.array(out[1:], dtype=bool)


@torch.no_grad()
def episode_scores(model: WorldModel, frames, actions, cal: SurpriseCalibration) -> np.ndarray:
    return episode_errors(model, frames, actions, cal.whitening) / cal.scale


def auroc(negatives, positives) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    neg, pos = np.sort(np.asarray(negatives)), np.asarray(positives)
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(neg) * len(pos)))


def window_max(scores, window: int) -> np.ndarray:
    """Largest score of every `window` consecutive frames."""
    s = np.asarray(scores)
    return np.lib.stride_tricks.sliding_window_view(s, window).max(-1) if len(s) >= window else s[:0]


def summarise(nominal: list[EventEpisode], events: list[EventEpisode], cal: SurpriseCalibration, window: int = 2,
              skipped: dict[str, str] | None = None):
    """Per event: AUROC, frames to detect, detection rate; stops on nominal episodes; both again at lower thresholds,
    and (under "checks", for episodes with `checks` set) for the score and the model-free checks together. An event
    in `skipped` (see skipped_events) is reported as {"skipped": reason}.

    AUROC separates what a stop within `window` frames has to act on: the
    largest score in the first `window` frames of each event against the
    largest score of every `window` consecutive nominal frames. `auroc_frames`
    compares single frames instead (each of the first `window` event frames
    against every nominal frame); it is lower for a teleport, whose second
    frame is nominal again once the history has caught up.
    """
    negatives = np.concatenate([window_max(e.scores, window) for e in nominal])
    nominal_frames = np.concatenate([e.scores for e in nominal])
    report = {"nominal_stops": nominal_stops(nominal, cal, cal.threshold), "nominal_episodes": len(nominal),
              "window": window}
    skipped = skipped or {}
    report.update({kind: {"skipped": reason} for kind, reason in skipped.items()})
    visible = {kind: [e for e in events if e.kind == kind and e.onset > 0] for kind in EVENTS if kind not in skipped}
    for kind, eps in visible.items():
        never = sum(e.kind == kind and e.onset < 0 for e in events)
        if not eps:
            report[kind] = {"episodes": 0, "never_visible": never}
            continue
        first = [e.scores[e.onset - 1: e.onset - 1 + window] for e in eps]
        delays = detection_delays(eps, cal, cal.threshold)
        report[kind] = {
            "auroc": auroc(negatives, [f.max() for f in first]),
            "auroc_frames": auroc(nominal_frames, np.concatenate(first)),
            "detected": float(np.isfinite(delays).mean()),
            "frames_to_detect_median": float(np.median(delays)),
            "frames_to_detect_max": float(delays.max()),
            f"detected_within_{window}": float((delays <= window).mean()),
            "episodes": len(eps),
            "never_visible": never,
        }
        if all(e.checks is not None for e in eps):
            both = detection_delays(eps, cal, cal.threshold, checks=True)
            report[kind]["checks"] = {"detected": float(np.isfinite(both).mean()),
                                      f"detected_within_{window}": float((both <= window).mean())}
    if all(e.checks is not None for e in nominal):
        report["checks_nominal_stops"] = nominal_stops(nominal, cal, cal.threshold, checks=True)
    # Lower thresholds trade nominal stops for earlier detection: the curve a user picks an operating point on.
    report["threshold_sweep"] = [
        {"threshold": t, "nominal_stops": nominal_stops(nominal, cal, t),
         **{f"{kind}_within_{window}": float((detection_delays(eps, cal, t) <= window).mean())
            for kind, eps in visible.items() if eps}}
        for t in cal.threshold * np.array(SWEEP)]
    return report


def trips(e: EventEpisode, cal: SurpriseCalibration, threshold: float, checks: bool = False) -> np.ndarray:
    """Where a fresh detector (cal's rules, this threshold) trips over the episode's scores; with `checks`,
    also where the model-free checks do."""
    t = detect_offline(e.scores, threshold, cal.consecutive, instant=cal.instant)
    return t | e.checks if checks else t


def nominal_stops(nominal: list[EventEpisode], cal: SurpriseCalibration, threshold: float,
                  checks: bool = False) -> int:
    """Nominal episodes that the detector (cal's rules, this threshold) would stop."""
    return sum(bool(trips(e, cal, threshold, checks).any()) for e in nominal)


def detection_delays(eps: list[EventEpisode], cal: SurpriseCalibration, threshold: float,
                     checks: bool = False) -> np.ndarray:
    """Frames from each event's first visible frame to the stop (1 = that frame; inf = never)."""
    delays = []
    for e in eps:
        hit = next((i for i, t in enumerate(trips(e, cal, threshold, checks)) if t and i >= e.onset - 1), None)
        delays.append(np.inf if hit is None else hit - (e.onset - 1) + 1)
    return np.array(delays)
