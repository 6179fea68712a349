"""Stopping and resuming a training run: one consistent checkpoint, one run per folder, one log, one line per
mistake, and plots that are read as meant."""

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jepa_wm.cli import main as cli
from jepa_wm.core.checkpoint import CheckpointError, load_checkpoint
from jepa_wm.core.config import ConfigError, ModelConfig
from jepa_wm.core.model import build_model
from jepa_wm.data.dataset import ClipDataset, split_episodes
from jepa_wm.train import trainer
from jepa_wm.train.synthetic import synthetic_episodes
from jepa_wm.train.trainer import TrainConfig, train

ROOT = Path(__file__).parent.parent
# 40 training clips (5 batches of 8: checkpoints fall mid-epoch), 20 validation clips.
CFG = TrainConfig(steps=8, batch_size=8, val_every=3, log_every=1, warmup=2, precision="fp32")


@pytest.fixture(scope="module")
def data():
    train_eps, val_eps = split_episodes(synthetic_episodes(6, steps=16, size=32, seed=3), 0.34)
    return ClipDataset(train_eps, 7), ClipDataset(val_eps, 7)


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny", dropout=0.2))  # dropout: the random state must resume too


class _Crash(Exception):
    pass


def _stop_at_step(monkeypatch, n, error=_Crash):
    """The n-th training step from now raises `error`; returns what puts the loss back."""
    loss, calls = trainer.jepa_loss, []

    def stop(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise error
        return loss(*args, **kw)

    monkeypatch.setattr(trainer, "jepa_loss", stop)
    return lambda: monkeypatch.setattr(trainer, "jepa_loss", loss)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """The uninterrupted run every resumed one must end as."""
    out = tmp_path_factory.mktemp("whole")
    train(_model(), *data, CFG, out)
    return load_checkpoint(out / "model.safetensors")[0].state_dict()


@pytest.mark.parametrize("killed", ["after the model", "before the model"])
def test_a_kill_inside_a_checkpoint_resumes_one_consistent_step(data, whole, tmp_path, monkeypatch, capsys, killed):
    # Killed between the two writes of the step-6 checkpoint, a resume ran "from step 3" on the weights of step 6.
    out, save = tmp_path / "run", trainer.save_checkpoint

    def kill_at_step_6(path, model, meta):
        if meta["step"] == 6:
            if killed == "after the model":
                save(path, model, meta)
            raise _Crash
        return save(path, model, meta)

    monkeypatch.setattr(trainer, "save_checkpoint", kill_at_step_6)
    with pytest.raises(_Crash):
        train(_model(), *data, CFG, out)
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    train(_model(), *data, CFG, out)
    assert f"resuming {out} from step 6" in capsys.readouterr().out  # no progress lost
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta["step"] == 8
    for name, value in whole.items():
        assert torch.allclose(value, model.state_dict()[name], atol=1e-6), name
    assert not (out / ".lock").exists()


def test_a_training_state_from_before_it_held_the_weights_must_match_the_model_beside_it(data, tmp_path):
    out = tmp_path / "run"
    train(_model(), *data, dataclasses.replace(CFG, steps=6), out)
    state = torch.load(out / "train_state.pt", weights_only=True)
    legacy = {"optimizer": state["optimizer"], "step": 3, "run": None, "rng": {"cpu": torch.get_rng_state()}}
    torch.save(legacy, out / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"model.safetensors holds step 6 but .*train_state.pt step 3: the run "
                                              r"stopped between the two writes"):
        train(_model(), *data, CFG, out)


def test_a_second_run_in_the_same_folder_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli(["train", "--synthetic", "4", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                    "--out", str(out)]) == 2
    assert (f"jepa-wm train: error: {out} is in use by another run (it holds .lock): wait for that run to end, or "
            "give another --out") in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of it touched


def _cli_train(out, config=None, *extra):
    argv = ["train", "--synthetic", "4", "--preset", "tiny", "--out", str(out), *extra]
    return cli(argv + (["--config", str(config)] if config else []))


def test_a_truncated_training_state_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli_train(out, None, "--steps", "2", "--batch-size", "8") == 0
    model = (out / "model.safetensors").read_bytes()
    (out / "train_state.pt").write_bytes(b"PK\x03\x04 truncated")
    assert _cli_train(out, None, "--steps", "2", "--batch-size", "8") == 2
    assert (f"jepa-wm train: error: cannot read the training state {out / 'train_state.pt'} ("
            in capsys.readouterr().err)
    assert (out / "model.safetensors").read_bytes() == model


def test_a_batch_larger_than_the_data_is_one_line_before_anything_is_written(tmp_path, capsys):
    assert _cli_train(tmp_path / "run", None, "--steps", "2", "--batch-size", "500") == 2
    assert ("jepa-wm train: error: train batch_size 500 is larger than the 102 training clips (102 per rank on 1): "
            "lower it, or give more data\n") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_in_one_line_where_the_run_stopped_and_how_to_resume(tmp_path, capsys, monkeypatch):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"steps": 6, "batch_size": 8, "val_every": 2, "warmup": 1}}))
    restore = _stop_at_step(monkeypatch, 5, KeyboardInterrupt)
    try:
        code = _cli_train(tmp_path / "run", config)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert (f"jepa-wm train: training stopped at step 4; {tmp_path / 'run'} holds the checkpoint of step 4, and the "
            "same command resumes from there\n") in err
    assert "Traceback" not in err
    restore()
    assert _cli_train(tmp_path / "run", config) == 0
    assert f"resuming {tmp_path / 'run'} from step 4" in capsys.readouterr().out


def test_ctrl_c_outside_the_training_loop_says_interrupted(tmp_path, capsys, monkeypatch):
    import jepa_wm.cli.export as export

    def stopped(args):  # as while bags load, or an export runs
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "run", stopped)
    assert cli(["export", "--preset", "tiny", "--out", str(tmp_path / "onnx")]) == 130
    assert capsys.readouterr().err == "jepa-wm export: interrupted\n"


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "lr", "1e-3", "train config: lr must be a number, got '1e-3' (YAML reads an exponent as a number only "
              "with a dot and a sign, like 1.0e-3)"),
    ("train", "steps", '"100"', "train config: steps must be an integer, got '100'"),
    ("train", "batch_size", "8.5", "train config: batch_size must be an integer, got 8.5"),
    ("train", "freeze_encoder", '"no"', "train config: freeze_encoder must be true or false, got 'no'"),
    ("train", "sigreg_directions", "0", "train sigreg_directions must be positive, got 0"),
    ("train", "grad_clip", "0", "train grad_clip must be positive, got 0"),
    ("train", "warmup", "-5", "train warmup must be a finite number >= 0, got -5"),
    ("model", "latent_dim", "'16'", "model config: latent_dim must be an integer, got '16'"),
    ("data", "cache_dir", "off", "data config: cache_dir must be a string, got False (YAML reads an unquoted off, "
             "no, on or yes as false or true: quote it)"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_one_line_naming_the_key(tmp_path, capsys, section, key,
                                                                               value, message):
    # Each of these failed late with a traceback (a str compared with an int, NaN at step 1), or trained without a
    # word ("no" is a true string; a negative warmup is none).
    sections = {"model": {"preset": "tiny"}, "train": {"steps": "2", "batch_size": "8", "val_every": "2"}}
    sections.setdefault(section, {})[key] = value  # YAML text, so that 1e-3 reads as the user wrote it
    config = tmp_path / "train.yaml"
    config.write_text("".join(f"{s}:\n" + "".join(f"  {k}: {v}\n" for k, v in keys.items())
                              for s, keys in sections.items()))
    assert _cli_train(tmp_path / "run", config) == 2
    assert f"jepa-wm train: error: {message}\n" in capsys.readouterr().err


def test_the_shipped_configs_and_model_load_through_the_checked_dataclasses():
    from jepa_wm.core.config import dataclass_from_dict
    from jepa_wm.data.dataset import DataConfig, checkpoint_data_config
    from jepa_wm.train.pipeline import check_config, model_config

    config = yaml.safe_load((ROOT / "config" / "train.yaml").read_text())
    check_config(config)
    TrainConfig.from_dict(config["train"])
    TrainConfig.from_dict({**config["train"], **config["finetune"]})
    model_config(config["model"])
    dataclass_from_dict(DataConfig, config["data"], "data config")
    model, meta = load_checkpoint(ROOT / "models" / "sim.safetensors")
    checkpoint_data_config(meta)
    TrainConfig.from_dict(meta["train_config"]["train"])
    with pytest.raises(ConfigError, match=r"data config: image_size must be an integer, got '64'"):
        dataclass_from_dict(DataConfig, {"image_size": "64"}, "data config")


def test_the_log_holds_each_step_once_and_its_clock_runs_on_after_a_resume(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    restore = _stop_at_step(monkeypatch, 5)  # after the checkpoint of step 3
    with pytest.raises(_Crash):
        train(_model(), *data, CFG, out)
    assert (out / "losses.png").stat().st_size > 10_000  # drawn at every checkpoint, not only at the end
    restore()
    train(_model(), *data, CFG, out)
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in rows if "val_pred_error" in r] == [3, 6, 8]
    times = [r["time"] for r in rows if "time" in r]
    assert times == sorted(times)  # the resumed run's time goes on from the checkpoint's, not from 0

    # A fresh run in the folder of one that stopped before its first checkpoint starts its own log.
    shutil.rmtree(out)
    _stop_at_step(monkeypatch, 3)
    with pytest.raises(_Crash):
        train(_model(), *data, CFG, out)
    restore()
    train(_model(), *data, dataclasses.replace(CFG, steps=2), out)
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2]


DDP_SCRIPT = """
import sys

import torch

from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import build_model
from jepa_wm.data.dataset import ClipDataset, split_episodes
from jepa_wm.train.synthetic import synthetic_episodes
from jepa_wm.train.trainer import TrainConfig, train

train_eps, val_eps = split_episodes(synthetic_episodes(6, steps=16, size=32, seed=3), 0.34)
torch.manual_seed(0)
model = build_model(ModelConfig.preset("tiny", dropout=0.2))
# warmup > steps: the learning rate does not depend on how many steps the run was asked for
cfg = TrainConfig(steps=int(sys.argv[2]), batch_size=4, val_every=3, warmup=10, precision="fp32")
train(model, ClipDataset(train_eps, 7), ClipDataset(val_eps, 7), cfg, sys.argv[1])
"""


def test_a_resumed_run_under_torchrun_ends_as_the_uninterrupted_one(tmp_path):
    # Only rank 0's random state was saved, and restored only in one process: the ranks' dropout masks changed.
    exe = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    (tmp_path / "ddp_resume.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def run(out, steps):  # one process group per process, as `torchrun -m jepa_wm train` makes
        proc = subprocess.run([exe, "--standalone", "--nproc_per_node=2", str(tmp_path / "ddp_resume.py"),
                               str(tmp_path / out), str(steps)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("whole", 6)
    run("resumed", 3)  # stops at its checkpoint of step 3, mid-epoch
    assert "resuming" in run("resumed", 6)
    whole, _ = load_checkpoint(tmp_path / "whole" / "model.safetensors")
    resumed, _ = load_checkpoint(tmp_path / "resumed" / "model.safetensors")
    for name, value in whole.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name


def test_an_output_folder_that_cannot_be_made_fails_every_rank_in_one_line(tmp_path, capsys, monkeypatch):
    # Rank 0 alone made --out: it failed in one line, the other ranks in a gloo traceback from their next collective.
    # As rank 1 of 2 (with no rank 0 to meet, joining the process group fails at once).
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    out = Path("/proc/jepa_wm_test_out")  # /proc is a directory where nothing can be made
    assert _cli_train(out, None, "--steps", "2", "--batch-size", "4") == 2
    err = capsys.readouterr().err
    assert "jepa-wm train: error: [Errno 2] No such file or directory: '/proc/jepa_wm_test_out'" in err


def test_the_plot_keeps_validation_sigreg_apart_and_shows_negative_r2(tmp_path, monkeypatch):
    import matplotlib.figure

    rows = [{"step": s, "loss": 0.3, "pred": 0.02, "sigreg": 1.2, "lr": 1e-3, "grad_norm": 1.0, "time": s}
            for s in range(1, 7)]
    rows += [{"step": s, "val_pred_error": 0.03, "val_sigreg": 30.0, "val_probe_r2": r2, "val_probe_r2_object": -0.8}
             for s, r2 in ((3, -0.6), (6, 0.4))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures, savefig = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                                    savefig(fig, *a, **k)))
    trainer.plot_losses(tmp_path / "metrics.jsonl", tmp_path / "losses.png")

    def axis(label):
        return next(ax for ax in figures[0].axes if any(label in line.get_label() for line in ax.get_lines()))

    # The statistic grows with the samples it sees: 30 on every validation clip is no worse than 1.2 on a batch.
    assert axis("val sigreg") is not axis("train sigreg")
    assert "all val" in next(line.get_label() for line in axis("val sigreg").get_lines())
    assert axis("object probe").get_ylim()[0] < -0.8  # an R^2 below 0 (worse than the mean) is drawn
    assert (tmp_path / "losses.png").exists()


def test_sigreg_of_a_gaussian_is_about_1_05_as_its_docstring_says():
    from jepa_wm.core.sigreg import epps_pulley_weights, sigreg

    t, phi0, w = epps_pulley_weights()
    null = float((w * (1 - phi0**2)).sum())
    assert null == pytest.approx(1.05, abs=0.005) and float(w.sum()) == pytest.approx(2.5, abs=0.01)
    torch.manual_seed(0)
    for batch in (64, 1024):  # whatever the batch size
        draws = [float(sigreg(torch.randn(4, batch, 32), step=s, num_directions=128, global_batch=False))
                 for s in range(30)]
        assert np.mean(draws) == pytest.approx(null, abs=0.05)
    assert "= 1.05" in " ".join(sigreg.__doc__.split())
