"""The JEPA world model: an encoder, projectors, and an action-conditioned predictor.

    frames --encoder--> features --projector--> z_t                (latent, D = latent_dim)
    (z_0..z_t, a_0..a_t) --predictor--> --pred_projector--> z_{t+1}

The encoder is a ViT (its CLS token; LeWorldModel's choice, the `lewm` preset)
or a small convolutional net whose features are spatial soft-argmax keypoints
(the `sim` preset: on the simulator arm it learns every joint where the ViT's
CLS learned only the base yaw).

The predictor is a time-causal transformer: token i is the latent of frame i,
conditioned on the action a_i taken after that frame through AdaLN-zero in
every block; its output predicts the latent of frame i+1. Time positions are
rotary (relative), so a rollout can cache the keys and values of past tokens
and compute only the new token each step (`rollout`), which gives exactly the
same numbers as recomputing the whole sequence (`predict`).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jepa_wm.core.config import ModelConfig


def preprocess(frames, image_size: int) -> torch.Tensor:
    """uint8 RGB frames (..., H, W, 3), numpy or torch -> float (B, 3, S, S) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 RGB frames, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.shape[-1] != 3:
        raise ValueError(f"preprocess expects (..., H, W, 3) RGB frames, got shape {tuple(x.shape)}")
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose training statistics are those of the global batch under torch.distributed.

    SyncBatchNorm needs a GPU; this one all-reduces sums (differentiably) on any
    backend, so a data-parallel step equals one step on the concatenated batch.
    """

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce  # differentiable: backward sums too

        C = x.shape[1]
        xf = x.float()
        stats = all_reduce(torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_tensor([float(x.shape[0])])]), "sum",
                           dist.group.WORLD)
        n = stats[-1]
        mean = stats[:C] / n
        var = stats[C:2 * C] / n - mean**2
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


class Projector(nn.Module):
    """Linear - BatchNorm - GELU - Linear, applied to the last dimension of any shape."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), GlobalBatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, dim_out))

    def forward(self, x):
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


# ----------------------------------------------------------------------------- encoder


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT with a CLS token; returns the CLS feature (B, enc_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.enc_dim, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.enc_dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, cfg.enc_dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.enc_dim, cfg.enc_heads, cfg.enc_mlp_dim) for _ in range(cfg.enc_depth))
        self.norm = nn.LayerNorm(cfg.enc_dim)

    def forward(self, pixels):
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


class ConvEncoder(nn.Module):
    """Convolutional trunk with a spatial soft-argmax head (deep spatial autoencoders, Levine et al. 2016).

    Each of the enc_dim output channels becomes a keypoint: its expected image
    coordinates under a softmax over positions, plus its log-sum-exp (how present
    it is). Link positions are what joint angles are, so the latent gets them
    as coordinates instead of having to discover them. Returns (B, 3 * enc_dim).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.enc_dim
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 5, 2, 2), nn.GroupNorm(8, 32), nn.GELU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.GroupNorm(8, 32), nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(8, 64), nn.GELU(),
            nn.Conv2d(64, 64, 3, 1, 1), nn.GroupNorm(8, 64), nn.GELU(),
            nn.Conv2d(64, c, 1),
        )
        # NHWC: oneDNN's convolutions (CPU) and cuDNN's run faster in it; ~12% of a training step here.
        self.trunk.to(memory_format=torch.channels_last)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.out_dim = 3 * c

    def forward(self, pixels):
        f = self.trunk(pixels.contiguous(memory_format=torch.channels_last))  # (B, C, h, w)
        B, C, h, w = f.shape
        logits = (f * self.log_temperature.exp()).flatten(2)  # (B, C, h*w)
        attn = logits.softmax(-1).view(B, C, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=f.device, dtype=f.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=f.device, dtype=f.dtype)
        x = (attn.sum(2) * xs).sum(-1)
        y = (attn.sum(3) * ys).sum(-1)
        presence = logits.logsumexp(-1) - math.log(h * w)
        return torch.cat([x, y, presence], dim=-1)


# ----------------------------------------------------------------------------- predictor


def rotary(x, cos, sin):
    """Rotate channel pairs of x (B, H, T, d) by per-position angles (T, d/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class KVCache:
    """Keys and values of the tokens seen so far, per predictor block."""

    def __init__(self, depth: int):
        self.k: list = [None] * depth
        self.v: list = [None] * depth
        self.buffers: dict = {}  # rollout_steps' per-batch key/value buffers over this prefix

    def length(self, block: int = 0) -> int:
        return 0 if self.k[block] is None else self.k[block].shape[2]

    def expand(self, batch: int):
        """Share a batch-1 prefix with `batch` rollouts (a view, no copy)."""
        self.k = [k.expand(batch, -1, -1, -1) for k in self.k]
        self.v = [v.expand(batch, -1, -1, -1) for v in self.v]

    def append(self, i: int, k, v):
        if self.k[i] is not None:
            k, v = torch.cat([self.k[i], k], dim=2), torch.cat([self.v[i], v], dim=2)
        self.k[i], self.v[i] = k, v
        return k, v


class PredictorBlock(nn.Module):
    """Pre-norm transformer block; the action modulates both sub-layers (AdaLN-zero)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, inner = cfg.pred_dim, cfg.pred_heads * cfg.pred_head_dim
        self.heads, self.dropout = cfg.pred_heads, cfg.dropout
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * inner), nn.Linear(inner, dim)
        self.mlp = Mlp(dim, cfg.pred_mlp_dim, cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # Zero init: every block starts as the identity, whatever the action.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x, rope, cache, index):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, *rope), rotary(k, *rope)
        past = 0 if cache is None else cache.length(index)
        if cache is not None:
            k, v = cache.append(index, k, v)
        if T == 1:
            mask, causal = None, False  # one new token sees everything before it
        elif past == 0:
            mask, causal = None, True
        else:
            mask, causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past), False
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, cond, rope, cache=None, index=0):
        """x, cond (B, T, pred_dim); rope: (cos, sin) of the T new positions."""
        s1, b1, g1, s2, b2, g2 = self.ada(cond).chunk(6, dim=-1)
        x = x + g1 * self.resid_drop(self.attention(self.norm1(x) * (1 + s1) + b1, rope, cache, index))
        return x + g2 * self.resid_drop(self.mlp(self.norm2(x) * (1 + s2) + b2))


class Predictor(nn.Module):
    """(latents (B,T,D), actions (B,T,A)) -> features (B,T,pred_dim), causal over time."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.latent_dim, cfg.pred_dim)
        self.action_embed = nn.Sequential(
            nn.Linear(cfg.action_block, cfg.pred_dim), nn.SiLU(), nn.Linear(cfg.pred_dim, cfg.pred_dim)
        )
        self.blocks = nn.ModuleList(PredictorBlock(cfg) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.latent_dim)
        self._rope = None
        self._rot_cache: dict = {}

    def rope(self, length: int, device, dtype):
        if self._rope is None or self._rope[0].shape[0] < length or self._rope[0].device != device:
            half = self.cfg.pred_head_dim // 2
            freq = 1.0 / (100.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
            angle = torch.arange(max(length, 64), device=device, dtype=torch.float32)[:, None] * freq
            self._rope = (angle.cos(), angle.sin())
        return self._rope[0].to(dtype), self._rope[1].to(dtype)

    def forward(self, latents, actions, cache: KVCache | None = None):
        past = 0 if cache is None else cache.length()
        x, cond = self.inp(latents), self.action_embed(actions)
        cos, sin = self.rope(past + x.shape[1], x.device, x.dtype)
        rope = (cos[past:past + x.shape[1]], sin[past:past + x.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block(x, cond, rope, cache, i)
        return self.out(self.norm(x))

    def rotated_qkv(self, i: int, position: int, dtype):
        """Block i's qkv weights with the rotary rotation of `position` folded into the q and k rows.

        rotary(W h + b) = (R W) h + R b: one matmul gives rotated queries and keys.
        Cached per (block, position, dtype); recomputed when the weights change.
        """
        lin = self.blocks[i].qkv
        key = (i, position, dtype, lin.weight.device)
        stamp = (lin.weight._version, lin.weight.data_ptr(), lin.bias._version, lin.bias.data_ptr())
        hit = self._rot_cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
        cos, sin = self.rope(position + 1, lin.weight.device, torch.float32)
        c, s = cos[position], sin[position]  # (hd/2,)
        inner, hd = self.cfg.pred_heads * self.cfg.pred_head_dim, self.cfg.pred_head_dim
        w, b = lin.weight.float(), lin.bias.float()

        def rot(m):  # rows of q or k: (inner, ...) -> rotate channel pairs of every head
            m = m.reshape(self.cfg.pred_heads, hd // 2, 2, *m.shape[1:])
            shape = (1, hd // 2) + (1,) * (m.dim() - 3)
            cc, ss = c.view(shape), s.view(shape)
            m1, m2 = m[:, :, 0], m[:, :, 1]
            return torch.stack((m1 * cc - m2 * ss, m1 * ss + m2 * cc), dim=2).reshape(inner, *m.shape[3:])

        w = torch.cat([rot(w[:inner]), rot(w[inner:2 * inner]), w[2 * inner:]]).to(dtype)
        b = torch.cat([rot(b[:inner]), rot(b[inner:2 * inner]), b[2 * inner:]]).to(dtype)
        self._rot_cache[key] = (stamp, w, b)
        return w, b

    def rollout_steps(self, z, actions, prefix: KVCache, head):
        """Inference-only autoregressive rollout of S candidates from one shared state.

        z (1, D) the last observed latent, actions (S, N, A), prefix the keys and
        values of the earlier observed tokens (batch 1, shared by every candidate).
        `head` maps predictor features to latents (the pred_projector). The same
        arithmetic as `forward` with a KV cache, arranged for speed at small T and
        large S: the action conditioning (embedding and every block's AdaLN) is
        computed for all N steps in one batched call; the rotary rotation is folded
        into the qkv weights of each position (`rotated_qkv`); keys and values go
        into buffers allocated once per (prefix, S) with the prefix copied in once,
        and attention over at most H - 1 + N tokens is two batched matmuls and a
        softmax. Returns (S, N, D).
        """
        S, N, _ = actions.shape
        P = prefix.length()
        heads, dim, hd = self.cfg.pred_heads, self.cfg.pred_dim, self.cfg.pred_head_dim
        inner = heads * hd
        scale = hd ** -0.5
        dtype, device = z.dtype, z.device
        silu_cond = F.silu(self.action_embed(actions))  # (S, N, dim), every step at once
        mods = []
        for blk in self.blocks:
            m = blk.ada[1](silu_cond)  # (S, N, 6*dim)
            m[..., 0:dim] += 1.0  # (1 + scale) once for every step
            m[..., 3 * dim:4 * dim] += 1.0
            mods.append(m.transpose(0, 1))  # (N, S, 6*dim): step n is mods[i][n]
        # The prefix's keys and values are shared by every candidate: (heads, hd, P) and (heads, P, hd),
        # attended with batched-over-heads matmuls. The candidates' own keys and values go into
        # buffers (S, heads, N, hd), allocated once per (prefix, S, thread) and reused by every call.
        past = [(prefix.k[i][0].to(dtype).transpose(-1, -2) * scale, prefix.v[i][0].to(dtype)) if P else None
                for i in range(len(self.blocks))]
        bufkey = (S, N, dtype, threading.get_ident())
        bufs = prefix.buffers.get(bufkey)
        if bufs is None:
            bufs = [(torch.empty(S, heads, N, hd, dtype=dtype, device=device),
                     torch.empty(S, heads, N, hd, dtype=dtype, device=device)) for _ in self.blocks]
            prefix.buffers[bufkey] = bufs
        out = []
        for n in range(N):
            x = self.inp(z)  # (1|S, dim)
            for i, blk in enumerate(self.blocks):
                s1, b1, g1, s2, b2, g2 = mods[i][n].chunk(6, dim=-1)
                w, b = self.rotated_qkv(i, P + n, dtype)
                qkv = F.linear(torch.addcmul(b1, F.layer_norm(x, (dim,)), s1), w, b).view(S, 3, heads, hd)
                kb, vb = bufs[i]
                kb[:, :, n] = qkv[:, 1]
                vb[:, :, n] = qkv[:, 2]
                q = qkv[:, 0]  # (S, heads, hd)
                att = (q.unsqueeze(2) * kb[:, :, : n + 1]).sum(-1).mul_(scale)  # (S, heads, n+1): own keys
                if P:
                    pk_t, pv = past[i]
                    att = torch.cat([torch.matmul(q.transpose(0, 1), pk_t).transpose(0, 1), att], dim=-1)
                att = torch.softmax(att, dim=-1)
                y = torch.matmul(att[..., P:].unsqueeze(2), vb[:, :, : n + 1]).squeeze(2)  # (S, heads, hd)
                if P:
                    y = y + torch.matmul(att[..., :P].transpose(0, 1), pv).transpose(0, 1)
                x = torch.addcmul(x, g1, blk.proj(y.reshape(S, inner)))
                x = torch.addcmul(x, g2, blk.mlp(torch.addcmul(b2, F.layer_norm(x, (dim,)), s2)))
            z = head(self.out(self.norm(x)))
            out.append(z)
        return torch.stack(out, dim=1)


# ----------------------------------------------------------------------------- world model


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg) if cfg.encoder == "conv" else ViTEncoder(cfg)
        self.projector = Projector(getattr(self.encoder, "out_dim", cfg.enc_dim), cfg.proj_hidden, cfg.latent_dim)
        self.predictor = Predictor(cfg)
        self.pred_projector = Projector(cfg.latent_dim, cfg.proj_hidden, cfg.latent_dim)
        # Per-joint action normalisation, fitted on the training data and saved with the weights.
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))

    def forward(self, pixels, actions):
        """Training pass over clips: pixels (B, L, 3, S, S), actions (B, L, A) -> (latents, predictions).

        latents (B, L, D) of every frame; predictions (B, L-1, D) of frames 1..L-1.
        """
        B, L = pixels.shape[:2]
        z = self.encode(pixels.flatten(0, 1)).view(B, L, -1)
        return z, self.predict(z[:, :-1], actions[:, :-1])

    def encode(self, pixels):
        """Preprocessed frames (B, 3, S, S) -> latents (B, latent_dim)."""
        return self.projector(self.encoder(pixels))

    def predict(self, latents, actions):
        """Teacher-forced prediction: output i predicts the latent of frame i+1."""
        return self.pred_projector(self.predictor(latents, actions))

    @torch.no_grad()
    def observe(self, history, history_actions) -> KVCache:
        """Keys and values of the observed prefix (every history latent but the last).

        The prefix is the same for every candidate of a plan: a planner computes it
        once per plan and passes it to each `rollout` call (`prefix=`).
        """
        cache = KVCache(len(self.predictor.blocks))
        H = history.shape[1]
        if H > 1:
            self.predictor(history[:, :-1], history_actions[:, : H - 1], cache)
        return cache

    @torch.no_grad()
    def rollout(self, history, history_actions, plan_actions, prefix: KVCache | None = None):
        """Imagine latents under candidate action sequences, reusing past keys and values.

        history (1|S, H, D) observed latents, history_actions (1|S, H-1, A) the
        actions taken between them, plan_actions (S, N, A) candidates whose first
        action follows the last observed frame. Returns (S, N, D): the predicted
        latent after each planned action. `prefix`: `observe(history, history_actions)`
        when the caller already has it (it is not modified).
        """
        S, N, _ = plan_actions.shape
        if prefix is None:
            prefix = self.observe(history, history_actions)
        if not self.training and history.shape[0] == 1:
            # One shared history (the planner's case): the step-wise fast path.
            return self.predictor.rollout_steps(history[:, -1], plan_actions, prefix, self.pred_projector)
        cache = KVCache(len(self.predictor.blocks))
        cache.k, cache.v = list(prefix.k), list(prefix.v)
        if cache.k[0] is not None and history.shape[0] == 1:
            cache.expand(S)
        z = history[:, -1:].expand(S, -1, -1)
        out = []
        for n in range(N):
            z = self.pred_projector(self.predictor(z, plan_actions[:, n:n + 1], cache))
            out.append(z)
        return torch.cat(out, dim=1)

    def normalize_actions(self, actions):
        """Joint-space actions (..., k*action_dim) -> model space, per joint."""
        return self._per_joint(actions, lambda a: (a - self.action_mean) / self.action_std)

    def denormalize_actions(self, actions):
        return self._per_joint(actions, lambda a: a * self.action_std + self.action_mean)

    def _per_joint(self, actions, fn):
        a = torch.as_tensor(actions, dtype=self.action_mean.dtype, device=self.action_mean.device)
        return fn(a.reshape(*a.shape[:-1], -1, self.cfg.action_dim)).reshape(a.shape)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_weights(model: WorldModel):
    """Truncated-normal linear weights, as ViTs are usually initialised; AdaLN stays zero."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not name.endswith("ada.1"):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


def build_model(cfg: ModelConfig) -> WorldModel:
    return init_weights(WorldModel(cfg))


def flops_per_token(cfg: ModelConfig) -> float:
    """Multiply-adds x2 of one predictor token plus its output projector (the rollout's unit of work)."""
    inner = cfg.pred_heads * cfg.pred_head_dim
    block = 2 * cfg.pred_dim * (4 * inner + 2 * cfg.pred_mlp_dim + 6 * cfg.pred_dim)
    head = 2 * (cfg.pred_dim * cfg.latent_dim + 2 * cfg.latent_dim * cfg.proj_hidden)
    io = 2 * (cfg.latent_dim * cfg.pred_dim + cfg.action_block * cfg.pred_dim + cfg.pred_dim**2)
    return float(cfg.pred_depth * block + head + io)

