"""A checkpoint rebuilds the same model; anything else is refused with a message naming the problem."""

import json

import pytest
import torch
from safetensors.torch import save_file

from jepa_wm.core.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import build_model, preprocess


@pytest.fixture
def saved(tmp_path):
    cfg = ModelConfig.preset("tiny", history=4)
    model = build_model(cfg).eval()
    model.action_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    meta = {"joint_names": ["a", "b", "c"], "surprise": {"threshold": 3.2, "consecutive": 2, "scale": 0.01}}
    return save_checkpoint(tmp_path / "m.safetensors", model, meta), model, meta


def test_round_trip_restores_config_weights_and_meta(saved):
    path, model, meta = saved
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.cfg.history == 4  # history comes from the checkpoint
    assert loaded_meta == meta
    px = preprocess(torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8), 32)
    assert torch.equal(loaded.encode(px), model.encode(px))
    assert torch.equal(loaded.action_mean, model.action_mean)
    assert not loaded.training


def test_a_checkpoint_is_readable_by_other_users(saved):
    # Deployed nodes often run as another user than training did.
    path, _, _ = saved
    assert path.stat().st_mode & 0o777 == 0o644


def test_mismatched_config_names_both_sides(saved):
    path, model, _ = saved
    other = ModelConfig.preset("tiny", history=3, latent_dim=24)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expected_config=other)
    msg = str(err.value)
    assert str(path) in msg and "history: checkpoint 4 vs expected 3" in msg and "latent_dim: checkpoint 16 vs expected 24" in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_are_refused(saved, damage):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_file_and_foreign_safetensors_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a jepa_wm checkpoint"):
        read_header(foreign)


@pytest.mark.parametrize("drop", ["model_config", "meta"])
def test_a_header_without_its_config_or_metadata_is_refused_naming_the_file(saved, tmp_path, drop):
    path, model, _ = saved
    header = read_header(path)
    del header[drop]
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bad), metadata={"jepa_wm": json.dumps(header)})
    with pytest.raises(CheckpointError, match=rf"checkpoint {bad} has a jepa_wm header without {drop}"):
        load_checkpoint(bad)


def test_weights_that_do_not_fit_the_stored_config_are_refused(saved, tmp_path):
    path, model, meta = saved
    header = read_header(path)
    header["model_config"]["pred_depth"] = 3
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bad), metadata={"jepa_wm": json.dumps(header)})
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_checkpoint(bad)


def test_failed_save_keeps_the_previous_checkpoint(saved):
    path, model, meta = saved
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, model, {"unserialisable": object()})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_save_that_fails_on_replace_leaves_no_temporary_file(saved):
    path, model, meta = saved
    target = path.parent / "a_folder"
    target.mkdir()
    with pytest.raises(OSError):
        save_checkpoint(target, model, meta)  # the weights are written, the rename onto a folder fails
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, "a_folder"])


def test_the_cli_reports_a_damaged_checkpoint_in_one_line(saved, capsys, monkeypatch):
    from jepa_wm.cli import main

    path, _, _ = saved
    path.write_bytes(path.read_bytes()[:100])
    monkeypatch.delenv("JEPA_WM_TRACEBACK", raising=False)
    assert main(["export", "--model", str(path), "--out", str(path.parent / "onnx"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jepa-wm export: error: ") and str(path) in err and "Traceback" not in err
    assert err.count("\n") == 1
    # The traceback stays one variable away, for a bug report.
    monkeypatch.setenv("JEPA_WM_TRACEBACK", "1")
    with pytest.raises(CheckpointError, match=str(path)):
        main(["export", "--model", str(path), "--out", str(path.parent / "onnx"), "--no-verify"])


@pytest.mark.parametrize("argv", [
    ["eval", "--goals", "1"],
    ["demo"],
    ["calibrate", "--sim-goals", "1"],
])
def test_a_model_of_joint_state_deltas_is_refused_where_it_would_plan(saved, tmp_path, capsys, argv):
    # The planner sends positions; a delta model's plans would drive the arm towards its deltas.
    from jepa_wm.cli import main

    path, model, meta = saved
    delta = save_checkpoint(tmp_path / "delta.safetensors", model, {**meta, "data": {"action_type": "delta"}})
    assert main([*argv, "--model", str(delta), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {delta} was trained with data.action_type 'delta'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
