"""`jepa-wm bench`: encoder, predictor, CEM and closed-loop speed per backend, precision and model size.

Every (preset, backend) pair runs in a fresh subprocess so that its peak
resident memory (ru_maxrss) is that configuration's alone. The parent measures
this machine's dense matmul rate (2048^3, 512^3 with --quick; fp32 and bf16) in the same run, makes
the seeded planning problems, and checks every backend's plans against the
PyTorch fp32 reference. The sim preset runs the shipped checkpoint (or
--model); the others random weights (PyTorch's default Linear init, AdaLN
included, so that actions matter as they do after training). Speed targets
live here, not in the tests.

JSON fields (one record per preset x backend in "results"):
  preset, backend, precision, params (model parameters)
  encoder_ms_per_frame          one uint8 frame -> latent, preprocessing included (batch 1)
  encoder_ms_per_frame_batch16  the same per frame, 16 frames per call
  predictor_ms_per_call         one batched rollout call: `samples` candidates x horizon (one CEM iteration)
  cem_cold_plan_ms              a full cold plan (iterations x samples x horizon), median over problems
  cem_warm_cycle_ms             a warm-started replan (warm_iterations), median
  closed_loop_hz                encode one frame + warm-started plan with the shipped planner settings
                                (config/planner.yaml), 1 / median cycle time
  threads, closed_loop_threads  torch and ONNX Runtime threads of the timings above, of the closed loop
  peak_rss_mib                  peak resident memory of the subprocess (ru_maxrss)
  flops_per_plan                flops_per_token(cfg) x predictor tokens evaluated by one cold plan
  achieved_gflops               flops_per_plan / cold plan time
  matmul_fraction               achieved_gflops / this machine's dense matmul rate at the same precision
  plan_agreement                vs torch float32 on the same seeded problems (reachable goals):
                                first_action_max_abs_diff (normalised action units), same_first_action
                                (within 0.05), normalised_regret_max ((fp32-evaluated cost of this plan -
                                cost of the fp32 plan) / cost of holding the last command, CEM's
                                cold start, worst problem),
                                costs / reference_costs (fp32-evaluated)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jepa_wm.cli import nonnegative_int, positive_int

BACKENDS = ["torch-fp32", "torch-bf16", "onnxruntime", "tensorrt"]
FIRST_ACTION_TOL = 0.05


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="tiny preset, small planner, one problem: a smoke run for tests")
    p.add_argument("--presets", default=None, help="comma list of model presets (default sim,lewm)")
    p.add_argument("--backends", default=None,
                   help=f"comma list from {BACKENDS} (default: all; torch-bf16 only where the CPU has bf16 instructions)")
    p.add_argument("--model", default=None, help="checkpoint for the sim preset (default: the shipped models/sim.safetensors)")
    p.add_argument("--problems", type=positive_int, default=None, help="seeded planning problems per config (default 3)")
    p.add_argument("--out", default="bench.json", help="JSON output path")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (0: all cores)")


def lewm_planner():
    from jepa_wm.core.config import PlannerConfig

    return PlannerConfig(samples=300, iterations=30, elites=30, horizon=5)


def shipped_planner() -> tuple[dict, int]:
    """The planner node's shipped CEM settings (config/planner.yaml) and its torch thread count."""
    cfg = {"samples": 64, "iterations": 8, "warm_iterations": 3, "elites": 8, "horizon": 1}
    threads = 1
    from jepa_wm.resources import config_file

    path = config_file("planner.yaml")
    if path.is_file():
        import yaml

        params = (yaml.safe_load(path.read_text()) or {}).get("planner", {}).get("ros__parameters", {})
        cfg = {k: int(params.get(k, v)) for k, v in cfg.items()}
        threads = int(params.get("torch_threads", threads))
    return cfg, threads


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------- model and problems


def make_model(preset: str, checkpoint: str | None = None, seed: int = 0):
    import torch

    from jepa_wm.core.checkpoint import load_checkpoint
    from jepa_wm.core.config import ModelConfig
    from jepa_wm.core.model import build_model

    if checkpoint:
        return load_checkpoint(checkpoint)[0]
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset(preset)).eval()
    for m in model.modules():  # AdaLN away from zero, so the actions change the predictions
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    return model


def make_problems(model, horizon: int, count: int, seed: int = 0) -> list[dict]:
    """Seeded problems with a reachable goal: the latent that a random action sequence leads to."""
    import torch

    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        hist = torch.randn(cfg.history, cfg.latent_dim, generator=g)
        hist_a = torch.randn(cfg.history - 1, cfg.action_block, generator=g)
        true = torch.randn(horizon, cfg.action_block, generator=g)
        goal = model.rollout(hist[None], hist_a[None], true[None])[0, -1]
        out.append({"history": hist.tolist(), "history_actions": hist_a.tolist(), "goal": goal.tolist()})
    return out


def plan_cost(model, problem: dict, actions, kind: str = "l2") -> float:
    import torch

    from jepa_wm.core.planner import goal_cost

    h = torch.tensor(problem["history"])[None]
    ha = torch.tensor(problem["history_actions"])[None]
    final = model.rollout(h, ha, torch.tensor(actions)[None])[0, -1]
    return goal_cost(final[None], torch.tensor(problem["goal"]), kind).item()


# ----------------------------------------------------------------------------- worker (one subprocess per config)


def _median_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def worker(spec: dict) -> dict:
    import numpy as np
    import torch

    from jepa_wm.core.config import ModelConfig, PlannerConfig
    from jepa_wm.core.model import flops_per_token
    from jepa_wm.core.planner import CEMPlanner

    threads = spec["threads"] or os.cpu_count()
    torch.set_num_threads(threads)
    backend, reps = spec["backend"], spec["reps"]
    if backend.startswith("torch"):
        from jepa_wm.backends.torch_backend import TorchEncoder, TorchPredictor

        model = make_model(spec["preset"], spec.get("checkpoint"))
        precision = "bfloat16" if backend == "torch-bf16" else "float32"

        pair = TorchEncoder(model, precision), TorchPredictor(model, precision, spec["split_batch"])
        params = model.num_parameters()
        del model  # the backends hold what they need (a bf16 copy, or the same fp32 model)

        def backends(horizon, n_threads=None):  # torch's threads are set process-wide
            return pair
    else:
        from jepa_wm.backends import load_backend_config, make_backend

        def backends(horizon, n_threads=threads):
            # ONNX Runtime gets the thread count explicitly: its default (0) takes every core.
            cfg = load_backend_config()
            cfg["onnxruntime"]["intra_op_num_threads"] = n_threads
            return make_backend(backend, onnx_dir=spec["onnx_dirs"][str(horizon)], config=cfg)
        params = spec["params"]
    cfg = ModelConfig.from_dict(spec["model_config"])
    pc = PlannerConfig(**spec["planner"])
    enc, pred = backends(pc.horizon)
    precision = pred.precision
    rec = {"preset": spec["preset"], "backend": backend, "precision": precision, "params": params,
           "providers": getattr(pred, "providers", None), "threads": threads}

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (16, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    rec["encoder_ms_per_frame"] = _median_ms(lambda: enc.encode(frame), 3 * reps, 2)
    rec["encoder_ms_per_frame_batch16"] = _median_ms(lambda: enc.encode(frames), reps) / 16

    problems = spec["problems"]
    p0 = problems[0]
    h, ha = torch.tensor(p0["history"])[None], torch.tensor(p0["history_actions"])[None]
    cands = torch.randn(pc.samples, pc.horizon, cfg.action_block, generator=torch.Generator().manual_seed(1))
    prefix = pred.observe(h, ha)
    rec["predictor_batch"] = [pc.samples, pc.horizon]
    rec["predictor_ms_per_call"] = _median_ms(lambda: pred.rollout(h, ha, cands, prefix=prefix), reps)

    cold, warm, plans = [], [], []
    for i, prob in enumerate(problems):
        hist, hist_a, goal = (torch.tensor(prob[k]) for k in ("history", "history_actions", "goal"))
        planner = CEMPlanner(pred, pc, seed=i)
        t = time.perf_counter()
        result = planner.plan(hist, hist_a, goal)
        cold.append(time.perf_counter() - t)
        plans.append(result.actions.tolist())
        for _ in range(max(1, reps // 2)):
            t = time.perf_counter()
            planner.plan(hist, hist_a, goal)
            warm.append(time.perf_counter() - t)
    rec["cem_cold_plan_ms"] = 1e3 * statistics.median(cold)
    rec["cem_warm_cycle_ms"] = 1e3 * statistics.median(warm)
    rec["plans"] = plans
    tokens = pc.samples * pc.horizon * pc.iterations + pc.horizon + (cfg.history - 1)
    rec["flops_per_plan"] = flops_per_token(cfg) * tokens
    rec["achieved_gflops"] = rec["flops_per_plan"] / (rec["cem_cold_plan_ms"] / 1e3) / 1e9

    # Closed loop with the planner node's shipped settings: encode one frame, then a warm-started plan.
    ship = PlannerConfig(**spec["closed_loop_planner"])
    loop_threads = spec["closed_loop_threads"] or threads
    torch.set_num_threads(loop_threads)
    # New backends only where the loop needs others: another horizon, or ONNX Runtime sessions on other threads
    # (a session's thread count is fixed when it is made). A spare pair would count in peak_rss_mib.
    if ship.horizon != pc.horizon or (backend == "onnxruntime" and loop_threads != threads):
        enc2, pred2 = backends(ship.horizon, loop_threads)
    else:
        enc2, pred2 = enc, pred
    planner = CEMPlanner(pred2, ship, seed=0)
    hist, hist_a, goal = (torch.tensor(p0[k]) for k in ("history", "history_actions", "goal"))

    def cycle():
        nonlocal hist, hist_a
        z = enc2.encode(frame)[0]
        hist = torch.cat([hist[1:], z[None]])
        r = planner.plan(hist, hist_a, goal)
        hist_a = torch.cat([hist_a[1:], r.actions[:1]]) if hist_a.shape[0] else hist_a

    planner.plan(hist, hist_a, goal)
    ms = _median_ms(cycle, max(10, 2 * reps), 2)
    rec["closed_loop_ms"] = ms
    rec["closed_loop_hz"] = 1e3 / ms
    rec["closed_loop_threads"] = loop_threads  # torch's, and ONNX Runtime's sessions for this loop
    rec["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rec


# ----------------------------------------------------------------------------- parent


def _run_worker(spec: dict) -> dict:
    root = str(Path(__file__).resolve().parents[2])  # import path of this jepa_wm, for the worker
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, "-m", "jepa_wm.cli.bench", f.name], capture_output=True, text=True, env=env)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {spec['preset']}/{spec['backend']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _agreement(model, problems, plans, ref_plans) -> dict:
    """How close this backend's plans are to the fp32 reference's, judged by the fp32 model.

    regret = (cost(plan) - cost(reference plan)) / cost(holding the last command): the fraction of
    the improvement CEM achieves from its initial mean that this backend's choice gives up
    (negative: it found a better plan than the reference)."""
    import torch

    diffs, regrets, costs, ref_costs = [], [], [], []
    for prob, plan, ref in zip(problems, plans, ref_plans):
        diffs.append((torch.tensor(plan[0]) - torch.tensor(ref[0])).abs().max().item())
        start = plan_cost(model, prob, [prob["history_actions"][-1]] * len(ref))
        costs.append(plan_cost(model, prob, plan))
        ref_costs.append(plan_cost(model, prob, ref))
        regrets.append((costs[-1] - ref_costs[-1]) / max(start, 1e-12))
    return {"first_action_max_abs_diff": max(diffs), "same_first_action": bool(max(diffs) <= FIRST_ACTION_TOL),
            "normalised_regret_max": max(regrets), "costs": costs, "reference_costs": ref_costs,
            "problems": len(plans)}


def _fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def table(results) -> str:
    head = ["preset", "backend", "enc ms/f", "pred ms/call", "cold plan ms", "warm ms", "loop Hz",
            "peak MiB", "GFLOP/plan", "GFLOP/s", "% matmul", "1st-act diff", "regret"]
    rows = [head]
    for r in results:
        ag = r.get("plan_agreement") or {}
        rows.append([r["preset"], f"{r['backend']}", _fmt(r["encoder_ms_per_frame"], "{:.2f}"),
                     _fmt(r["predictor_ms_per_call"]), _fmt(r["cem_cold_plan_ms"], "{:.0f}"),
                     _fmt(r["cem_warm_cycle_ms"], "{:.0f}"), _fmt(r.get("closed_loop_hz")),
                     _fmt(r["peak_rss_mib"], "{:.0f}"), _fmt(r["flops_per_plan"] / 1e9, "{:.1f}"),
                     _fmt(r["achieved_gflops"], "{:.0f}"), _fmt(100 * r["matmul_fraction"], "{:.0f}"),
                     _fmt(ag.get("first_action_max_abs_diff"), "{:.3f}"), _fmt(ag.get("normalised_regret_max"), "{:+.4f}")])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from jepa_wm.backends.onnx_export import export_onnx
    from jepa_wm.backends.torch_backend import bf16_is_fast
    from jepa_wm.core.checkpoint import load_checkpoint
    from jepa_wm.core.config import PRESETS, ConfigError, PlannerConfig
    from jepa_wm.eval.common import default_model_path

    # Every mistake in the command line is reported here, before minutes of benchmarking.
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the path of the JSON file to write")
    presets = [p.strip() for p in (args.presets or ("tiny" if args.quick else "sim,lewm")).split(",") if p.strip()]
    wanted = [b.strip() for b in (args.backends or ",".join(BACKENDS)).split(",") if b.strip()]
    for flag, names, known in (("--presets", presets, sorted(PRESETS)), ("--backends", wanted, BACKENDS)):
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            raise ConfigError(f"{flag}: {f'unknown {unknown}' if unknown else 'none given'}; choose from {known}")
    sim_checkpoint = None
    if "sim" in presets:  # the shipped weights wherever the command runs from; --model loaded now, so a bad one stops here
        sim_checkpoint = str(args.model or default_model_path())
        load_checkpoint(sim_checkpoint)
    elif args.model:
        raise ConfigError(f"--model {args.model} is for the sim preset, which --presets {','.join(presets)} leaves out")
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    skipped = {}
    if args.backends is None and not bf16_is_fast():
        skipped["torch-bf16"] = ("this CPU has no bf16 instructions (AVX512-BF16 or AMX): emulated bf16 runs about "
                                 "20x slower than fp32; pass --backends torch-bf16 to measure it anyway")
        wanted.remove("torch-bf16")
    problems_n = args.problems or (1 if args.quick else 3)
    reps = 2 if args.quick else 5
    matmul_n = 512 if args.quick else 2048  # emulated bf16 takes ~15 s per 2048^3 product
    planner = (PlannerConfig(samples=32, iterations=3, elites=4, horizon=3, warm_iterations=2) if args.quick
               else lewm_planner())
    ship, ship_threads = shipped_planner()
    if args.quick:
        ship = {"samples": 16, "iterations": 2, "warm_iterations": 1, "elites": 4, "horizon": 3}

    if "tensorrt" in wanted:
        from jepa_wm.backends import BackendUnavailable
        from jepa_wm.backends.tensorrt_backend import import_tensorrt

        try:
            import_tensorrt()
        except BackendUnavailable as e:
            skipped["tensorrt"] = str(e)
            wanted.remove("tensorrt")
    machine = {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": threads, "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": _version("onnxruntime"),
        "matmul_gflops": {d: matmul_gflops(d, matmul_n) for d in ("float32", "bfloat16")},
    }
    print(f"matmul {matmul_n}^3 on this machine: fp32 {machine['matmul_gflops']['float32']:.0f} GFLOP/s, "
          f"bf16 {machine['matmul_gflops']['bfloat16']:.0f} GFLOP/s")
    results = []
    tmp = tempfile.TemporaryDirectory(prefix="jepa_wm_bench_")
    bar = tqdm(total=len(presets) * len(wanted), desc="bench", unit="config", file=sys.stderr)
    for preset in presets:
        checkpoint = sim_checkpoint if preset == "sim" else None
        model = make_model(preset, checkpoint)
        problems = make_problems(model, planner.horizon, problems_n)
        onnx_dirs = {}
        if any(b in ("onnxruntime", "tensorrt") for b in wanted):
            for hz in sorted({planner.horizon, ship["horizon"]}):
                onnx_dirs[str(hz)] = export_onnx(model, Path(tmp.name) / f"{preset}_h{hz}", horizon=hz) and str(
                    Path(tmp.name) / f"{preset}_h{hz}")
        ref = None
        for backend in wanted:
            bar.set_postfix_str(f"{preset}/{backend}")
            spec = {
                "preset": preset, "backend": backend, "checkpoint": checkpoint, "model_config": model.cfg.to_dict(),
                "params": model.num_parameters(), "planner": planner.__dict__, "closed_loop_planner": ship,
                "closed_loop_threads": ship_threads, "problems": problems, "onnx_dirs": onnx_dirs, "reps": reps,
                "threads": threads, "split_batch": 2 if threads >= 2 else 1,
            }
            rec = _run_worker(spec)
            rec["checkpoint"] = checkpoint or "random weights"
            prec = "bfloat16" if rec["precision"] in ("bfloat16", "bf16") else "float32"
            rec["matmul_fraction"] = rec["achieved_gflops"] / machine["matmul_gflops"][prec]
            if backend == "torch-fp32":
                ref = rec["plans"]
            rec["plan_agreement"] = _agreement(model, problems, rec["plans"], ref) if ref is not None else None
            results.append(rec)
            bar.update(1)
    bar.close()
    tmp.cleanup()
    report = {
        "machine": machine,
        "planner": planner.__dict__,
        "closed_loop_planner": dict(ship, torch_threads=ship_threads),
        "first_action_tolerance": FIRST_ACTION_TOL,
        "skipped": skipped,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(table(results))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"wrote {out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":  # worker: python -m jepa_wm.cli.bench SPEC.json
    print(json.dumps(worker(json.loads(Path(sys.argv[1]).read_text()))))
