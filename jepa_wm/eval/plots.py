"""PNG figures for evaluations: filmstrips, error over time, surprise traces, calibration histograms."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def filmstrip(episodes, png, rows: int = 6):
    """start | goal | end for the first `rows` episodes, with the outcome in the title."""
    rows = min(rows, len(episodes))
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for r, ep in enumerate(episodes[:rows]):
        for c, (img, title) in enumerate(zip(ep.frames, ("start", "goal", "end"))):
            ax = axes[r, c]
            ax.imshow(img), ax.set_xticks([]), ax.set_yticks([])
            if c == 2:
                title = f"end ({'ok' if ep.success else 'miss'}, {ep.final_error:.2f} rad)"
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def error_curves(planned, random, png, tolerance: float):
    """Joint error (and latent distance) to the goal over control steps, planner vs random."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for eps, colour, label in ((planned, "C0", "planner"), (random, "C3", "random")):
        errs = np.array([e.errors for e in eps])
        axes[0].plot(np.median(errs, 0), colour, label=f"{label} (median)")
        axes[0].fill_between(range(errs.shape[1]), *np.percentile(errs, [25, 75], 0), color=colour, alpha=0.2)
    axes[0].axhline(tolerance, color="k", ls="--", lw=1, label="success tolerance")
    axes[0].set(xlabel="control step", ylabel="max joint error (rad)", title="distance to the goal configuration")
    dist = np.array([e.latent_dist for e in planned])
    axes[1].plot(np.median(dist, 0), "C0")
    axes[1].set(xlabel="control step", ylabel="||z - z_goal||^2", title="latent distance (planner)", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def surprise_traces(nominal, events, cal, png):
    """Surprise score over frames per event type, event onsets aligned, with the calibrated threshold."""
    kinds = sorted({e.kind for e in events})
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4 * (len(kinds) + 1), 3.2), sharey=True)
    for e in nominal:
        axes[0].plot(e.scores, color="C0", alpha=0.3, lw=0.8)
    axes[0].set_title("nominal")
    for ax, kind in zip(axes[1:], kinds):
        for e in (e for e in events if e.kind == kind and e.onset > 0):
            ax.plot(np.arange(len(e.scores)) - (e.onset - 1), e.scores, color="C3", alpha=0.3, lw=0.8)
        ax.axvline(0, color="k", lw=1)
        ax.set_title(f"{kind} (visible from 0)")
    for ax in axes:
        ax.axhline(cal.threshold, color="k", ls="--", lw=1)
        ax.set_yscale("log"), ax.set_xlabel("frame"), ax.grid(alpha=0.3)
    axes[0].set_ylabel("surprise (x median nominal error)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def calibration_histogram(scores: dict, cal, png):
    """Nominal surprise scores per data source, with the calibrated threshold."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    hi = max(cal.threshold * cal.instant, max(s.max() for s in scores.values()))
    bins = np.logspace(np.log10(max(min(s.min() for s in scores.values()), 1e-3)), np.log10(hi * 1.1), 60)
    for name, s in scores.items():
        ax.hist(s, bins=bins, alpha=0.5, label=f"{name} ({len(s)} frames)")
    ax.axvline(cal.threshold, color="k", ls="--", lw=1, label=f"threshold {cal.threshold:.1f} x{cal.consecutive}")
    ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_xlabel("nominal surprise score (x median)"), ax.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
