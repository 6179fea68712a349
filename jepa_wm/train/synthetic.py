"""A tiny synthetic world for smoke runs and tests: a planar 3-link arm drawn with OpenCV.

Joints chase their commanded targets (a first-order position servo), so the
data has the same structure as the simulator's and a real arm's bags (frames,
commanded joint positions, measured joint positions) at a fraction of the
cost, and without MuJoCo.
"""

from __future__ import annotations

import cv2
import numpy as np

from jepa_wm.data.dataset import Episode

LINKS = (0.32, 0.26, 0.2)
LIMIT = np.array([2.6, 2.2, 2.2])


def draw_arm(joints, size: int = 64) -> np.ndarray:
    img = np.full((size, size, 3), 235, np.uint8)
    pts, angle, p = [(0.5, 0.85)], -np.pi / 2, np.array([0.5, 0.85])
    for q, length in zip(joints, LINKS):
        angle += q
        p = p + length * np.array([np.cos(angle), np.sin(angle)])
        pts.append(tuple(p))
    px = [(int(x * size), int(y * size)) for x, y in pts]
    colours = [(200, 40, 40), (40, 160, 40), (40, 40, 200)]
    for a, b, c in zip(px, px[1:], colours):
        cv2.line(img, a, b, c, thickness=max(2, size // 16))
    cv2.circle(img, px[-1], max(2, size // 20), (20, 20, 20), -1)
    return img


def synthetic_episodes(n: int, steps: int = 40, size: int = 64, seed: int = 0, gain: float = 0.5) -> list[Episode]:
    """n episodes of smooth random joint targets; actions are the commanded positions."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n):
        q = rng.uniform(-1, 1, 3) * LIMIT * 0.5
        target = q.copy()
        frames, actions, joints = [], [], []
        for t in range(steps):
            if t % 8 == 0:
                target = np.clip(q + rng.normal(0, 0.8, 3), -LIMIT, LIMIT)
            frames.append(draw_arm(q, size))
            joints.append(q.copy())
            actions.append(target.copy())
            q = q + gain * (target - q)
        stamps = (np.arange(steps) * 100_000_000).astype(np.int64)
        episodes.append(Episode(np.stack(frames), np.array(actions, np.float32), np.array(joints, np.float32),
                                stamps, f"synthetic:{seed}:{e}"))
    return episodes
