"""`jepa-wm export`: encoder, predictor and planner rollout to ONNX (dynamic batch), checked against PyTorch."""

from __future__ import annotations


def add_arguments(p):
    from jepa_wm.cli import nonnegative_int, positive_int

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint (.safetensors) to export")
    src.add_argument("--preset", help="export a randomly initialised model of this preset (tiny, sim, lewm): benchmarks")
    p.add_argument("--out", required=True, help="output directory (encoder.onnx, predictor.onnx, rollout.onnx, manifest.json)")
    p.add_argument("--horizon", type=positive_int, default=None,
                   help="planning horizon baked into rollout.onnx (default: the planner's `horizon` in --planner-config)")
    p.add_argument("--planner-config", default=None,
                   help="planner parameters overlaid on config/planner.yaml (any subset of its keys); "
                        "its `horizon` is the default of --horizon")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random weights and check inputs")


TOLERANCE = 1e-4  # max abs error of ONNX Runtime vs PyTorch fp32 for an export to be published


def verify(model, out_dir, seed: int = 0, batches=(1, 7), manifest: dict | None = None) -> dict:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch fp32 on fresh random inputs, per graph.

    manifest: the export's before it is written (default: read from out_dir)."""
    import torch

    from jepa_wm.backends.ort_backend import OrtEncoder, OrtPredictor

    cfg = model.cfg
    cpu = ["CPUExecutionProvider"]
    enc, pred = OrtEncoder(out_dir, cpu, manifest=manifest), OrtPredictor(out_dir, cpu, manifest=manifest)
    g = torch.Generator().manual_seed(seed + 1)
    err = {"encoder": 0.0, "predictor": 0.0, "rollout": 0.0}
    with torch.no_grad():
        for b in batches:
            px = torch.rand(b, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
            err["encoder"] = max(err["encoder"], (enc.encode(px) - model.encode(px)).abs().max().item())
            z, a = torch.randn(b, cfg.history + 2, cfg.latent_dim, generator=g), torch.randn(b, cfg.history + 2, cfg.action_block, generator=g)
            err["predictor"] = max(err["predictor"], (pred.predict(z, a) - model.predict(z, a)).abs().max().item())
            h, ha = torch.randn(1, cfg.history, cfg.latent_dim, generator=g), torch.randn(1, cfg.history - 1, cfg.action_block, generator=g)
            pa = torch.randn(b, pred.horizon, cfg.action_block, generator=g)
            err["rollout"] = max(err["rollout"], (pred.rollout(h, ha, pa) - model.rollout(h, ha, pa)).abs().max().item())
    return err


def load_model(args):
    import torch

    from jepa_wm.core.checkpoint import load_checkpoint
    from jepa_wm.core.config import ModelConfig
    from jepa_wm.core.model import build_model

    if args.model:
        return load_checkpoint(args.model)[0]
    torch.manual_seed(args.seed)
    return build_model(ModelConfig.preset(args.preset)).eval()


def planner_horizon(path=None) -> int:
    """The planner node's `horizon` (config/planner.yaml, overlaid with `path`): the export must match what it plans."""
    from jepa_wm.core.config import ConfigError
    from jepa_wm.eval.common import node_parameters

    horizon = node_parameters("planner", path).get("horizon")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        where = f"--planner-config {path}" if path else "config/planner.yaml"
        raise ConfigError(f"{where}: planner.ros__parameters.horizon is {horizon!r}, not an integer >= 1: "
                          "fix it or pass --horizon")
    return horizon


def run(args) -> int:
    from jepa_wm.backends import BackendUnavailable
    from jepa_wm.backends.onnx_export import export_onnx, write_manifest
    from jepa_wm.cli import check_out_dir

    check_out_dir(args.out)
    # Read even when --horizon overrides it: a mistake in the file should not pass unnoticed.
    horizon = planner_horizon(getattr(args, "planner_config", None))
    horizon = args.horizon or horizon
    model = load_model(args)
    # The manifest (what makes the directory usable) is written only once the graphs passed the check.
    manifest = export_onnx(model, args.out, horizon=horizon, checkpoint=args.model, publish=False)
    print(f"exported {', '.join(manifest['files'].values())} to {args.out} "
          f"(opset {manifest['opset']}, rollout horizon {horizon}, history {manifest['history']})")
    if not args.no_verify:
        err = verify(model, args.out, args.seed, manifest=manifest)
        print("ONNX Runtime vs PyTorch fp32, max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
        if max(err.values()) > TOLERANCE:
            raise BackendUnavailable(f"the ONNX export in {args.out} differs from PyTorch by {max(err.values()):.2e} "
                                     f"(more than {TOLERANCE:g}): no manifest.json written, so no backend uses it")
        manifest["verified"] = {"max_abs_error": err, "tolerance": TOLERANCE}
    write_manifest(args.out, manifest)
    return 0
