"""`jepa-wm bench --quick` measures every CPU backend and writes the documented JSON; bad flags fail up front."""

import json

import pytest

from jepa_wm.cli import main

FIELDS = [
    "preset", "backend", "precision", "params", "encoder_ms_per_frame", "encoder_ms_per_frame_batch16",
    "predictor_ms_per_call", "cem_cold_plan_ms", "cem_warm_cycle_ms", "closed_loop_hz", "peak_rss_mib",
    "flops_per_plan", "achieved_gflops", "matmul_fraction", "plan_agreement",
]


def test_quick_bench_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["matmul_gflops"]["float32"] > 0 and report["machine"]["matmul_gflops"]["bfloat16"] > 0
    got = {r["backend"]: r for r in report["results"]}
    assert {"torch-fp32", "onnxruntime"} <= set(got)
    # Measured where the hardware has them, else skipped with the reason (bf16 is emulated on AVX2-only CPUs).
    for backend in ("torch-bf16", "tensorrt"):
        assert backend in got or report["skipped"][backend], backend
    for r in report["results"]:
        missing = [f for f in FIELDS if f not in r]
        assert not missing, f"{r['backend']} lacks {missing}"
        for f in ("encoder_ms_per_frame", "predictor_ms_per_call", "cem_cold_plan_ms", "cem_warm_cycle_ms",
                  "closed_loop_hz", "peak_rss_mib", "flops_per_plan", "achieved_gflops", "matmul_fraction"):
            assert r[f] > 0, f
        assert 50 < r["peak_rss_mib"] < 4096  # a real per-process measurement, in MiB
    # ONNX Runtime runs the fp32 graph: the same plans as PyTorch fp32.
    assert got["onnxruntime"]["plan_agreement"]["first_action_max_abs_diff"] < 1e-4
    assert "cold plan ms" in capsys.readouterr().out


def test_help_has_no_worker_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--worker" not in out and "SUPPRESS" not in out


def test_onnxruntime_is_measured_with_the_recorded_thread_counts(tmp_path, monkeypatch):
    """ONNX Runtime's default takes every core: bench passes --threads, and the planner's torch_threads in the
    closed loop, and the JSON records what ran."""
    import jepa_wm.backends.ort_backend as ob
    import jepa_wm.cli.bench as bench

    made = []
    real = ob._session
    monkeypatch.setattr(ob, "_session", lambda path, providers=None, threads=0: made.append(threads) or real(
        path, providers, threads))
    monkeypatch.setattr(bench, "_run_worker", bench.worker)  # in this process, so that the sessions are seen
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--backends", "onnxruntime", "--threads", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())["results"][0]
    _, ship_threads = bench.shipped_planner()
    assert rec["threads"] == 2 and rec["closed_loop_threads"] == ship_threads
    assert set(made) == {2, ship_threads}


@pytest.mark.parametrize("argv, message", [
    (["--problems", "0"], "argument --problems: '0' is not an integer >= 1"),
    (["--threads", "-3"], "argument --threads: '-3' is not an integer >= 0"),
])
def test_bad_numbers_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--presets", "huge"], "--presets: unknown ['huge']; choose from"),
    (["--backends", "cuda"], "--backends: unknown ['cuda']; choose from"),
    (["--out", "."], "--out . is a directory"),
    (["--presets", "sim", "--model", "missing.safetensors"], "checkpoint missing.safetensors does not exist"),
    (["--model", "other.safetensors"], "--model other.safetensors is for the sim preset, which --presets tiny leaves out"),
])
def test_bad_choices_fail_before_any_benchmarking(tmp_path, monkeypatch, capsys, argv, message):
    import jepa_wm.cli.bench as bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a, **k: pytest.fail("benchmarked before checking the flags"))
    assert main(["bench", "--quick", "--backends", "torch-fp32", *argv]) == 2
    assert f"jepa-wm bench: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("batch", ["5,1,2", "abc", "1,2", "0,1,2", "1,2,3,4"])
def test_build_engine_batch_must_be_min_opt_max(tmp_path, capsys, batch):
    with pytest.raises(SystemExit) as e:
        main(["build-engine", "--onnx", "x.onnx", "--engine", str(tmp_path / "x.plan"), "--batch", batch])
    assert e.value.code == 2
    assert f"argument --batch: '{batch}' is not MIN,OPT,MAX" in capsys.readouterr().err
