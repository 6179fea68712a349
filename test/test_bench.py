"""`jepa-wm bench --quick` measures every CPU backend and writes the documented JSON."""

import json

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
