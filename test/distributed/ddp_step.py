"""Worker for test_distributed.py, run under torchrun: one data-parallel step on this rank's half of a fixed batch."""

import os
import sys

import torch
import torch.distributed as dist

from jepa_wm.core.config import ModelConfig
from jepa_wm.core.model import build_model
from jepa_wm.core.sigreg import jepa_loss

out = sys.argv[1]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
cfg = ModelConfig.preset("tiny")
model = build_model(cfg)
pixels = torch.randn(8, cfg.clip_len, 3, cfg.image_size, cfg.image_size)
actions = torch.randn(8, cfg.clip_len, cfg.action_block)
shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
ddp = torch.nn.parallel.DistributedDataParallel(model)
losses = jepa_loss(ddp, pixels[shard], actions[shard], lam=0.1, step=5, num_directions=64)
losses["loss"].backward()
# The global objective is the mean of the rank objectives (equal shards).
values = torch.stack([losses["loss"], losses["pred"], losses["sigreg"]]).detach()
dist.all_reduce(values)
if rank == 0:
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"values": values / world, "grads": grads, "running_mean": model.projector.net[1].running_mean}, out)
dist.destroy_process_group()
# Gloo's worker thread frees a finished all_reduce's tensors when it gets to it, and if that is during interpreter
# shutdown, taking the GIL there aborts ("terminate called without an active exception"; 2 CI runs, about 1 in 30 on
# a loaded 2-core machine, core dump: ~AsyncAllreduceWork -> decref_pyobject -> take_gil -> pthread_exit). The result
# is on disk: leave without the shutdown.
sys.stderr.flush()
os._exit(0)
