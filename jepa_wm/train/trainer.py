"""The training loop: AdamW, warmup + cosine, progress bar, resumable checkpoints, metrics, plots.

Runs unchanged in one process or under torchrun (DistributedDataParallel,
NCCL on GPUs, gloo on CPUs): every rank trains on its own shard, SIGReg sees
the global batch (jepa_wm.core.sigreg), and only rank 0 logs and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from jepa_wm.backends.torch_backend import DTYPES, resolve_precision
from jepa_wm.core.checkpoint import load_checkpoint, save_checkpoint
from jepa_wm.core.config import ConfigError, dataclass_from_dict
from jepa_wm.core.model import WorldModel, preprocess
from jepa_wm.core.sigreg import jepa_loss, sigreg
from jepa_wm.train.metrics import effective_rank, linear_probe_r2, object_probe_r2


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup: int = 100
    grad_clip: float = 1.0
    sigreg_weight: float = 0.1  # lambda
    sigreg_directions: int = 256
    precision: str = "auto"  # autocast dtype: "bf16", "fp32", or "auto" (bf16 where it is fast; fp32 to fine-tune)
    val_every: int = 250
    log_every: int = 10
    seed: int = 0
    freeze_encoder: bool = False  # dynamics-only fine-tuning
    workers: int = 0

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train precision {self.precision!r} must be 'auto', 'bf16' or 'fp32'")
        for name in ("steps", "batch_size", "val_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, d, "train config")


class Distributed:
    """Rank and world size from torchrun's environment; a no-op in one process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self):
        if self.world > 1 and dist.is_initialized():
            # Gloo frees finished collectives' tensors on its own thread, and one freed during interpreter shutdown
            # aborts the rank ("terminate called without an active exception"). Waiting here for rank 0's last
            # writes gives that thread seconds to finish: 0 aborts in 40 loaded 2-rank runs.
            dist.barrier()
            dist.destroy_process_group()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def to_model_inputs(model: WorldModel, batch, device):
    """A ClipDataset batch (uint8 frames, joint-space actions) -> preprocessed pixels and model-space actions."""
    frames = batch["frames"]
    B, L = frames.shape[:2]
    pixels = preprocess(frames, model.cfg.image_size).view(B, L, 3, model.cfg.image_size, model.cfg.image_size)
    actions = model.normalize_actions(batch["actions"].to(device))
    return pixels.to(device), actions


def training_precision(cfg: TrainConfig) -> str:
    """The precision the forward pass runs in; "auto" fine-tunes in fp32.

    bf16 caps how precise the predictor can get: 600 bf16 steps on the shipped model's own data left a validation
    error of 0.016, fp32 steps 0.0055 (from 0.0070), and with the encoder frozen fp32 costs little.
    """
    if cfg.precision == "auto":
        return "fp32" if cfg.freeze_encoder else "auto"
    return cfg.precision


def trainable_parameters(model: WorldModel, freeze_encoder: bool):
    if freeze_encoder:
        for module in (model.encoder, model.projector):
            module.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def evaluate(model: WorldModel, train_set, val_set, batch_size: int = 64, max_clips: int = 512) -> dict:
    """Prediction error, SIGReg, effective rank, joint-angle probe R^2 and, where the clips carry an object's
    position, the object probe R^2, on held-out clips."""
    model.eval()
    device = next(model.parameters()).device
    objects = train_set.has_objects and val_set.has_objects

    def latents(dataset):
        idx = np.linspace(0, len(dataset) - 1, min(len(dataset), max_clips)).astype(int)
        zs, preds, joints, objs = [], [], [], []
        for i in range(0, len(idx), batch_size):
            batch = torch.utils.data.default_collate([dataset[j] for j in idx[i:i + batch_size]])
            pixels, actions = to_model_inputs(model, batch, device)
            z, pred = model(pixels, actions)
            zs.append(z.float().cpu()), preds.append(pred.float().cpu()), joints.append(batch["joints"])
            if objects:
                objs.append(batch["objects"])
        flat = lambda xs: torch.cat(xs).flatten(0, 1) if xs else None  # noqa: E731
        return torch.cat(zs), torch.cat(preds), flat(joints), flat(objs)

    tz, _, tj, to = latents(train_set)
    vz, vp, vj, vo = latents(val_set)
    frames_t, frames_v = tz.flatten(0, 1), vz.flatten(0, 1)
    probe = linear_probe_r2(frames_t, tj, frames_v, vj, per_target=True)
    metrics = {
        "val_pred_error": float((vp - vz[:, 1:]).pow(2).mean()),
        # Rank 0 alone evaluates: a collective here would wait forever for the other ranks.
        "val_sigreg": float(sigreg(vz.transpose(0, 1), step=0, num_directions=512, global_batch=False)),
        "val_effective_rank": effective_rank(frames_v),
        "val_probe_r2": float(np.mean(probe)),
        # Per joint, because one well-seen joint can hide two that the latent ignores.
        **{f"val_probe_r2_joint{j}": r for j, r in enumerate(probe)},
    }
    object_r2 = object_probe_r2(frames_t, to, frames_v, vo) if objects else None
    if object_r2 is not None:
        metrics["val_probe_r2_object"] = object_r2
    return metrics


class RunMismatch(ValueError):
    """The output folder holds another run than the one asked for: resuming it would mix the two."""


def _differences(stored: dict, run: dict) -> list[str]:
    """'key: X there, Y now' for each key of `run` that the stored run has otherwise (nested dicts by field)."""
    out = []
    for key in sorted(set(stored) | set(run)):
        a, b = stored.get(key), run.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in _differences(a, b)]
        elif isinstance(a, list) and isinstance(b, list):
            gone, new = [x for x in a if x not in b], [x for x in b if x not in a]
            out.append(f"{key}: {len(a)} there, {len(b)} now (only there: {gone[:2]}, only now: {new[:2]})")
        else:
            out.append(f"{key}: {a!r} there, {b!r} now")
    return out


def _rng_state(device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_state(path: Path, device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file surfaces as several exception types
        raise RuntimeError(f"cannot read the training state {path} ({type(e).__name__}: {e}); the weights beside "
                           "it are untouched: to start over, give another --out") from e


def train(model: WorldModel, train_set, val_set, cfg: TrainConfig, out_dir, meta: dict | None = None,
          run: dict | None = None) -> dict:
    """Train `model` on ClipDatasets; writes out_dir/{model.safetensors, train_state.pt, metrics.jsonl, losses.png}.

    Resumes from out_dir/train_state.pt when it exists, where the run left off (same batches, same random
    state), and only if it was started as the same `run` (what identifies it: parent, data, recipe). Returns
    the final validation metrics.
    """
    env = Distributed()
    out = Path(out_dir)
    torch.manual_seed(cfg.seed + env.rank)
    model.to(env.device)
    params = trainable_parameters(model, cfg.freeze_encoder)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    step, state_path, ckpt_path = 0, out / "train_state.pt", out / "model.safetensors"
    metrics, rng = {}, None
    if state_path.exists() and ckpt_path.exists():
        state = _read_state(state_path, env.device)
        if run is not None and state.get("run") is not None and state["run"] != run:
            raise RunMismatch(f"{out} holds another run, so this one cannot resume there: "
                              + "; ".join(_differences(state["run"], run))
                              + f". Give another --out, or delete {out} to start over")
        resumed, resumed_meta = load_checkpoint(ckpt_path, expected_config=model.cfg)
        model.load_state_dict(resumed.state_dict())
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        metrics = resumed_meta.get("metrics", {})  # a finished run resumed for its calibration keeps its metrics
        # One process only: the file holds rank 0's generator, and each rank draws its own dropout masks.
        rng = state.get("rng") if env.world == 1 else None
        if env.main:
            print(f"resuming {out} from step {step}")
    elif ckpt_path.exists():
        raise RunMismatch(f"{out} holds a model ({ckpt_path.name}) but no train_state.pt to resume from; training "
                          "there would overwrite it: give another --out, or delete it")

    net = model
    if env.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        drop_last=True, persistent_workers=cfg.workers > 0)
    if len(loader) == 0:
        raise ValueError(f"training set has {len(train_set)} clips: fewer than one batch of {cfg.batch_size} per rank")
    bf16 = DTYPES[resolve_precision(training_precision(cfg), env.device)] == torch.bfloat16
    amp = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16)

    if env.main:
        out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "a") if env.main else None
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not env.main, dynamic_ncols=True)
    epoch, skip, t0 = step // len(loader), step % len(loader), time.time()
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        # Resuming mid-epoch: the loader draws its seed from the generator as the epoch starts, so the saved
        # state goes back after the batches already trained on are skipped; at an epoch's start, before.
        if rng is not None and not skip:
            _set_rng_state(rng, env.device)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        if rng is not None and skip:
            _set_rng_state(rng, env.device)
        rng, skip = None, 0
        for batch in batches:
            if step >= cfg.steps:
                break
            # A dynamics-only fine-tune trains the predictor as it is deployed: BatchNorm statistics frozen, no
            # dropout. In train mode 600 fp32 steps on the parent's own data took its validation error from 0.0070
            # to 0.011; in eval mode to 0.0055.
            net.train(not cfg.freeze_encoder)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            pixels, actions = to_model_inputs(model, batch, env.device)
            with amp:
                losses = jepa_loss(net, pixels, actions, cfg.sigreg_weight, step, cfg.sigreg_directions)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"loss became {losses['loss'].item()} at step {step}; last checkpoint kept in {out}")
            if env.main and step % cfg.log_every == 0:
                row = {"step": step, "lr": lr_at(step - 1, cfg), "grad_norm": float(grad_norm), "time": time.time() - t0}
                row.update({k: v.item() for k, v in losses.items()})
                log.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", pred=f"{row['pred']:.4f}", sigreg=f"{row['sigreg']:.3f}")
            bar.update(1)
            if step % cfg.val_every == 0 or step == cfg.steps:
                if env.main:
                    metrics = evaluate(model, train_set, val_set)
                    log.write(json.dumps({"step": step, **metrics}) + "\n")
                    log.flush()
                    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    save_checkpoint(ckpt_path, model, {**(meta or {}), "step": step, "metrics": metrics,
                                                       "train_config": dataclasses.asdict(cfg)})
                    tmp = state_path.with_suffix(".tmp")
                    torch.save({"optimizer": opt.state_dict(), "step": step, "run": run,
                                "rng": _rng_state(env.device)}, tmp)
                    os.replace(tmp, state_path)
                if env.world > 1:
                    dist.barrier()
        epoch += 1
    bar.close()
    if env.main:
        log.close()
        plot_losses(out / "metrics.jsonl", out / "losses.png")
    env.close()
    return metrics


def plot_losses(metrics_file, png):
    """Loss curves (prediction, SIGReg) and validation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_file)]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_pred_error" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for key in ("pred", "sigreg"):
        axes[0 if key == "pred" else 1].plot([r["step"] for r in train_rows], [r[key] for r in train_rows], label=f"train {key}")
    axes[0].plot([r["step"] for r in val_rows], [r["val_pred_error"] for r in val_rows], "o-", label="val pred")
    axes[1].plot([r["step"] for r in val_rows], [r["val_sigreg"] for r in val_rows], "o-", label="val sigreg")
    axes[0].set_yscale("log"), axes[1].set_yscale("log")
    axes[2].plot([r["step"] for r in val_rows], [r["val_probe_r2"] for r in val_rows], "o-", label="joint probe R^2")
    if any("val_probe_r2_object" in r for r in val_rows):
        axes[2].plot([r["step"] for r in val_rows], [r.get("val_probe_r2_object", np.nan) for r in val_rows], "s-",
                     label="object probe R^2")
    axes[2].set_ylim(-0.1, 1.05)
    for ax, title in zip(axes, ["prediction error", "SIGReg statistic", "validation probe"]):
        ax.set_title(title), ax.set_xlabel("step"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
