"""Data-parallel training must equal one process on the concatenated batch (LeWorldModel gets this wrong)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa_wm.core.checkpoint import load_checkpoint
from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import build_model
from jepa_wm.core.sigreg import jepa_loss

HERE = Path(__file__).parent


def torchrun(nproc, script, *args, timeout=300):
    exe = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [exe, "--standalone", f"--nproc_per_node={nproc}", str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_ranks_match_one_process_on_the_union(tmp_path):
    torchrun(2, HERE / "distributed" / "ddp_step.py", tmp_path / "ddp.pt")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = build_model(cfg)
    pixels = torch.randn(8, cfg.clip_len, 3, cfg.image_size, cfg.image_size)
    actions = torch.randn(8, cfg.clip_len, cfg.action_block)
    ref = jepa_loss(model, pixels, actions, lam=0.1, step=5, num_directions=64)
    ref["loss"].backward()

    expected = torch.stack([ref["loss"], ref["pred"], ref["sigreg"]]).detach()
    torch.testing.assert_close(ddp["values"], expected, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys()
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    torch.testing.assert_close(ddp["running_mean"], model.projector.net[1].running_mean, rtol=1e-5, atol=1e-6)


def test_jepa_wm_train_runs_unchanged_under_torchrun_and_learns(tmp_path):
    """`torchrun -m jepa_wm train`: 2 gloo ranks, one checkpoint and one log written by rank 0, loss falls."""
    out = tmp_path / "run"
    torchrun(2, "-m", "jepa_wm", "train", "--synthetic", "16", "--preset", "tiny", "--steps", "60",
             "--batch-size", "8", "--out", out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6, "rank 0 alone logs, every log_every steps"
    assert np.mean(losses[-2:]) < 0.92 * np.mean(losses[:2])
    _, meta = load_checkpoint(out / "model.safetensors")
    assert meta["step"] == 60
    assert sorted(p.name for p in out.iterdir()) == ["losses.png", "metrics.jsonl", "model.safetensors", "train_state.pt"]
