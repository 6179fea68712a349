"""SIGReg: push latents toward an isotropic Gaussian, and the JEPA training objective.

Sketched Isotropic Gaussian Regularization (LeJEPA, LeWorldModel): project the
latents of each frame on M random unit directions and measure, with the
Epps-Pulley statistic, how far each 1-D projection is from N(0, 1). The
statistic compares the empirical characteristic function (C + iS) with
exp(-t^2/2) on K nodes of [0, 3] by the trapezoid rule.

Data parallel: the statistic is only correct on the global batch. `sigreg`
therefore averages C and S over every rank (weighted by rank batch size) with
a differentiable all-reduce, and every rank draws the same directions from the
shared `step`. The loss is then identical on every rank and equal to the
single-process loss on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def epps_pulley_weights(num_knots: int = 17, t_max: float = 3.0, device=None):
    """Nodes t_k on [0, t_max] and trapezoid weights w_k * phi0(t_k), doubled for the even integrand."""
    t = torch.linspace(0.0, t_max, num_knots, device=device)
    phi0 = torch.exp(-0.5 * t**2)
    c = torch.full_like(t, 2.0)
    c[0] = c[-1] = 1.0
    return t, phi0, (t_max / (num_knots - 1)) * c * phi0


def random_directions(dim: int, num: int, step: int, device=None, dtype=torch.float32):
    """Fresh unit directions (dim, num) for each step, identical on every rank for the same step."""
    g = torch.Generator(device="cpu").manual_seed(0x5EED + int(step))
    u = torch.randn(dim, num, generator=g)
    return (u / u.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)


def _global_mean(x: torch.Tensor, local_batch: int):
    """Average per-rank means over the global batch; gradients flow back to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, local_batch
    from torch.distributed._functional_collectives import all_reduce  # differentiable: backward sums too

    n = torch.tensor([float(local_batch)], device=x.device)
    dist.all_reduce(n)
    return all_reduce(x * local_batch, "sum", dist.group.WORLD) / n, int(n.item())


def sigreg(z: torch.Tensor, step: int = 0, num_directions: int = 1024, num_knots: int = 17, t_max: float = 3.0,
           global_batch: bool = True):
    """Epps-Pulley statistic of z (T, B, D) along random directions, averaged over frames and directions.

    Its null value (z ~ N(0, I)) is about sum_k w_k (1 - phi0(t_k)^2) = 1.05, independently of B (at each node
    B E|ecf - phi0|^2 = Var cos + Var sin = 1 - phi0^2); departures from N(0, I) grow linearly with the (global)
    batch size. With `global_batch` (training) every rank must call it: the statistics are averaged over all
    ranks' batches.
    """
    T, B, D = z.shape
    u = random_directions(D, num_directions, step, z.device, z.dtype)
    t, phi0, w = (x.to(z.dtype) for x in epps_pulley_weights(num_knots, t_max, z.device))
    x = (z @ u).unsqueeze(-1) * t  # (T, B, M, K)
    stats = torch.stack([x.cos().mean(1), x.sin().mean(1)])  # (2, T, M, K): empirical char. function
    (C, S), n = _global_mean(stats, B) if global_batch else (stats, B)
    return (n * (((C - phi0) ** 2 + S**2) * w).sum(-1)).mean()


def jepa_loss(model, pixels: torch.Tensor, actions: torch.Tensor, lam: float = 0.1, step: int = 0,
              num_directions: int = 1024):
    """The whole objective: next-latent prediction error + lam * SIGReg. No decoder, no EMA.

    pixels (B, L, 3, S, S) preprocessed frames of a clip, actions (B, L, A) in model space
    (action i leads from frame i to frame i+1). Returns a dict of scalar tensors.
    """
    z, pred = model(pixels, actions)  # through forward(), so a DistributedDataParallel wrapper syncs gradients
    pred_loss = F.mse_loss(pred, z[:, 1:])
    reg = sigreg(z.transpose(0, 1), step=step, num_directions=num_directions)
    return {"loss": pred_loss + lam * reg, "pred": pred_loss, "sigreg": reg}
