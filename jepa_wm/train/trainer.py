"""The training loop: AdamW, warmup + cosine, progress bar, resumable checkpoints, metrics, plots.

Runs unchanged in one process or under torchrun (DistributedDataParallel,
NCCL on GPUs, gloo on CPUs): every rank trains on its own shard, SIGReg sees
the global batch (jepa_wm.core.sigreg), and only rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
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
from jepa_wm.core.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
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
        # grad_clip 0 zeroes every gradient and sigreg_directions 0 makes the loss NaN: both fail silently or late.
        for name in ("steps", "batch_size", "val_every", "log_every", "grad_clip", "sigreg_directions"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train {name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "warmup", "sigreg_weight", "seed", "workers"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"train {name} must be a finite number >= 0, got {getattr(self, name)}")

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

    def start(self):
        """Join the process group and take this rank's device."""
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
    """The output folder cannot take this run: it holds another one (resuming it would mix the two), or another
    run is writing there now."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which step the checkpoint holds and how to resume."""


@contextlib.contextmanager
def exclusive(out: Path):
    """Hold `out` for one run: a second run there would interleave the log and overwrite the checkpoints."""
    path = out / ".lock"
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunMismatch(f"{out} is in use by another run (it holds {path.name}): wait for that run to end, "
                              "or give another --out") from None
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        f.close()  # a run that was ending removed the file between our open and our lock: lock the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a run that opened it meanwhile sees it replaced
        f.close()


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


def _rng_states(env: Distributed) -> list | None:
    """Every rank's generator states, on rank 0 (each rank draws its own dropout masks); None elsewhere."""
    if env.world == 1:
        return [_rng_state(env.device)]
    states = [None] * env.world if env.main else None
    dist.gather_object(_rng_state(env.device), states, dst=0)
    return states


def _set_rng_state(state: dict, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_state(path: Path) -> dict:
    try:  # on the CPU: generator states must stay there; weights and optimizer state follow their parameters
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file surfaces as several exception types
        raise CheckpointError(f"cannot read the training state {path} ({type(e).__name__}: {e}); the weights "
                              "beside it are untouched: to start over, give another --out") from e


def _saved_step(path: Path) -> int | None:
    """The step of the model checkpoint at `path`; None where there is none or it cannot be read."""
    try:
        return read_header(path)["meta"].get("step")
    except CheckpointError:
        return None


def _rewrite_log(path: Path, step: int | None):
    """Keep the log's rows up to `step` (None: none): a resumed run logs the steps after its checkpoint again, and
    a fresh run does not continue another's log."""
    lines = path.read_text().splitlines() if path.exists() and step is not None else []
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut short by a kill
            pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _resume_weights(state: dict, state_path: Path, ckpt_path: Path, cfg) -> tuple[dict, dict]:
    """The weights and validation metrics that the training state at `state_path` resumes with."""
    if "model" in state:
        if state["model_config"] != cfg.to_dict():
            raise CheckpointError(f"{state_path} holds another model: "
                                  + "; ".join(_differences(state["model_config"], cfg.to_dict())))
        return state["model"], state["metrics"]
    # A state from before it held the weights: the model beside it must be of its step, or resuming would mix them.
    model, meta = load_checkpoint(ckpt_path, expected_config=cfg)
    if meta.get("step") != state["step"]:
        raise CheckpointError(f"{ckpt_path} holds step {meta.get('step')} but {state_path} step {state['step']}: "
                              "the run stopped between the two writes of a checkpoint, and resuming would mix them. "
                              "Give another --out, or delete both to start over")
    return model.state_dict(), meta.get("metrics", {})


def train(model: WorldModel, train_set, val_set, cfg: TrainConfig, out_dir, meta: dict | None = None,
          run: dict | None = None, in_effect=None) -> dict:
    """Train `model` on ClipDatasets; writes out_dir/{model.safetensors, train_state.pt, metrics.jsonl, losses.png}.

    Resumes from out_dir/train_state.pt when it exists, where the run left off (same weights, batches and random
    state on every rank), and only if it was started as the same `run` (what identifies it: parent, data, recipe;
    `in_effect` maps the stored one to the form of `run`, for folders written by an earlier version).
    Rank 0 holds out_dir meanwhile: a second run there is refused. Returns the final validation metrics.
    """
    env = Distributed()
    out = Path(out_dir)
    if len(train_set) // env.world < cfg.batch_size:  # the sampler and the loader both drop an incomplete batch
        raise ConfigError(f"train batch_size {cfg.batch_size} is larger than the {len(train_set)} training clips "
                          f"({len(train_set) // env.world} per rank on {env.world}): lower it, or give more data")
    # Every rank, before the process group: a bad --out then fails each rank alike, not rank 0 alone and the others
    # in their next collective.
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out) if env.main else contextlib.nullcontext():
        env.start()
        metrics = _train(model, train_set, val_set, cfg, out, meta, run, in_effect, env)
    env.close()
    return metrics


def _train(model, train_set, val_set, cfg: TrainConfig, out: Path, meta, run, in_effect, env: Distributed) -> dict:
    torch.manual_seed(cfg.seed + env.rank)
    model.to(env.device)
    params = trainable_parameters(model, cfg.freeze_encoder)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    state_path, ckpt_path, log_path = out / "train_state.pt", out / "model.safetensors", out / "metrics.jsonl"
    step, saved, metrics, rng, elapsed = 0, None, {}, None, 0.0
    if state_path.exists():
        state = _read_state(state_path)
        stored = state.get("run")
        if stored is not None and in_effect is not None:
            stored = in_effect(stored)
        if run is not None and stored is not None and stored != run:
            raise RunMismatch(f"{out} holds another run, so this one cannot resume there: "
                              + "; ".join(_differences(stored, run))
                              + f". Give another --out, or delete {out} to start over")
        # A finished run resumed for its calibration keeps its metrics.
        weights, metrics = _resume_weights(state, state_path, ckpt_path, model.cfg)
        model.load_state_dict(weights)
        opt.load_state_dict(state["optimizer"])
        step = saved = int(state["step"])
        elapsed = state.get("elapsed", 0.0)
        rngs = state.get("rng")
        rngs = [rngs] if isinstance(rngs, dict) else rngs  # a state from before it held every rank's
        # Each rank draws its own dropout masks; on another number of ranks the batches differ anyway.
        rng = rngs[env.rank] if rngs and len(rngs) == env.world else None
        if env.main:
            print(f"resuming {out} from step {step}")
    elif ckpt_path.exists():
        raise RunMismatch(f"{out} holds a model ({ckpt_path.name}) but no train_state.pt to resume from; training "
                          "there would overwrite it: give another --out, or delete it")

    def save_model():
        save_checkpoint(ckpt_path, model, {**(meta or {}), "step": step, "metrics": metrics,
                                           "train_config": dataclasses.asdict(cfg)})

    log = None
    if env.main:
        if saved is not None and _saved_step(ckpt_path) != saved:
            save_model()  # stopped between the two writes of a checkpoint: the deployable model catches up
        _rewrite_log(log_path, saved)
        log = open(log_path, "a")

    net = model
    if env.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=env.world, rank=env.rank, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        drop_last=True, persistent_workers=cfg.workers > 0)
    bf16 = DTYPES[resolve_precision(training_precision(cfg), env.device)] == torch.bfloat16
    amp = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16)

    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not env.main, dynamic_ncols=True)
    epoch, skip, t0 = step // len(loader), step % len(loader), time.time() - elapsed
    try:
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
                # dropout. In train mode 600 fp32 steps on the parent's own data took its validation error from
                # 0.0070 to 0.011; in eval mode to 0.0055.
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
                    raise FloatingPointError(f"loss became {losses['loss'].item()} at step {step}; last checkpoint kept "
                                             f"in {out}")
                if env.main and step % cfg.log_every == 0:
                    row = {"step": step, "lr": lr_at(step - 1, cfg), "grad_norm": float(grad_norm),
                           "time": time.time() - t0}
                    row.update({k: v.item() for k, v in losses.items()})
                    log.write(json.dumps(row) + "\n")
                    bar.set_postfix(loss=f"{row['loss']:.4f}", pred=f"{row['pred']:.4f}", sigreg=f"{row['sigreg']:.3f}")
                bar.update(1)
                if step % cfg.val_every == 0 or step == cfg.steps:
                    rngs = _rng_states(env)  # gathered from every rank
                    if env.main:
                        metrics = evaluate(model, train_set, val_set)
                        log.write(json.dumps({"step": step, **metrics}) + "\n")
                        log.flush()
                        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                        # The resume state first, in one atomic file with the weights it goes with: a kill before
                        # the model below is written leaves that one a checkpoint behind (resuming rewrites it),
                        # never weights of one step with the optimizer and step of another.
                        tmp = state_path.with_name(f".{state_path.name}.tmp")
                        torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(),
                                    "optimizer": opt.state_dict(), "step": step, "run": run, "rng": rngs,
                                    "metrics": metrics, "elapsed": time.time() - t0}, tmp)
                        os.replace(tmp, state_path)
                        saved = step  # what the same command resumes from, even if stopped before what follows
                        save_model()
                        plot_losses(log_path, out / "losses.png")
                    if env.world > 1:
                        dist.barrier()
                        saved = step
            epoch += 1
    except KeyboardInterrupt as e:
        resume = (f"{out} holds the checkpoint of step {saved}, and the same command resumes from there"
                  if saved is not None else "no checkpoint was written yet: the same command starts over")
        raise Interrupted(f"training stopped at step {step}; {resume}") from e
    finally:
        bar.close()
        if log is not None:
            log.close()
    return metrics


def plot_losses(metrics_file, png):
    """Loss curves (prediction, SIGReg) and validation metrics over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_file)]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_pred_error" in r]
    steps, val_steps = [r["step"] for r in train_rows], [r["step"] for r in val_rows]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    axes[0].plot(steps, [r["pred"] for r in train_rows], label="train pred")
    axes[0].plot(val_steps, [r["val_pred_error"] for r in val_rows], "o-", label="val pred")
    # Apart: the statistic grows with the number of samples it sees (one batch in training, every validation clip
    # here), so on one axis validation would look far worse than training.
    axes[1].plot(steps, [r["sigreg"] for r in train_rows], label="train sigreg (one batch)")
    axes[2].plot(val_steps, [r["val_sigreg"] for r in val_rows], "o-", color="C1", label="val sigreg (all val clips)")
    for ax in axes[:3]:
        ax.set_yscale("log")
    axes[3].plot(val_steps, [r["val_probe_r2"] for r in val_rows], "o-", label="joint probe R^2")
    if any("val_probe_r2_object" in r for r in val_rows):
        axes[3].plot(val_steps, [r.get("val_probe_r2_object", np.nan) for r in val_rows], "s-",
                     label="object probe R^2")
    axes[3].axhline(0.0, color="grey", lw=0.8)
    axes[3].set_ylim(top=1.05)  # the bottom follows the data: a negative R^2 (worse than the mean) shows
    titles = ["prediction error", "SIGReg, training batch", "SIGReg, all validation clips", "validation probe"]
    for ax, title in zip(axes, titles):
        ax.set_title(title), ax.set_xlabel("step"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
