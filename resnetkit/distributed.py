"""Data-parallel training on PyTorch's own engine: torchrun starts the processes, the trainer joins them.

    torchrun --standalone --nproc-per-node=2 -m resnetkit train --model resnet20 --batch-size 256
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m resnetkit train ...

torchrun announces itself through RANK / WORLD_SIZE / LOCAL_RANK (``runtime.rank_and_world``);
the trainer then joins the process group (gloo on CPU, NCCL on GPU), wraps the model in
``DistributedDataParallel``, and uses the few collectives below to agree on what every rank
logs, evaluates and decides. Nothing here runs in a single process.

``SyncBatchNorm`` exists because PyTorch's own one runs on GPUs only (``batch_norm_stats`` has no
CPU kernel in torch 2.13); on CUDA ``convert_sync_batchnorm`` uses PyTorch's.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Batch-norm statistics travel in a process group of their own: collectives issued during
# backward must not interleave with DDP's asynchronous gradient all-reduces on one gloo group
# (that mixed up whole gradient buckets in our tests).
_bn_group: dist.ProcessGroup | None = None


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def restart_count() -> int:
    """How many times torchrun has restarted the group after a failure (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def start(device: torch.device) -> None:
    """Join the group torchrun set up (its MASTER_ADDR/PORT, RANK and WORLD_SIZE are in the environment)."""
    global _bn_group
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The rendezvous store outlives a restart: under a prefix of its own, each attempt cannot
    # read the previous attempt's (dead) peer addresses, which made restarted groups hang.
    store, rank, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"resnetkit/attempt-{restart_count()}", store)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world)
    _bn_group = dist.new_group()


def stop() -> None:
    global _bn_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _bn_group = None


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place; unchanged in a single process."""
    if active():
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        moved = t.to(on)  # NCCL reduces GPU tensors only
        dist.all_reduce(moved)
        t.copy_(moved)
    return t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape on each), concatenated in rank order along dim 0; ``t``
    itself in a single process."""
    if not active():
        return t
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    parts = [torch.empty_like(t, device=on) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.to(on))
    return torch.cat(parts).to(t.device)


def all_max(value: float) -> float:
    """The largest ``value`` any rank holds (so every rank takes the same decision from a clock)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


@torch.no_grad()
def average_buffers(*modules: nn.Module | None) -> None:
    """Average BN running statistics over the ranks. Each rank updates them from its own share of
    the batch (DDP broadcasts rank 0's at every forward, but the last step's update stays local),
    so before an evaluation or a save they are made one estimate from every image, as timm's
    ``distribute_bn(reduce=True)`` does. With --sync-bn they already agree."""
    if not active():
        return
    for module in modules:
        for buf in module.buffers() if module is not None else ():
            if buf.is_floating_point():
                all_sum(buf).div_(dist.get_world_size())


def replicas_agree(model: nn.Module) -> bool:
    """Whether every rank holds bit-identical weights and buffers (always True in one process)."""
    if not active():
        return True
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    mine = torch.tensor(list(h.digest()), dtype=torch.uint8)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return all(torch.equal(mine, other) for other in every)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as DDP trains it: gradients averaged over the ranks during backward. DDP also
    broadcasts rank 0's weights and buffers at the start, so every replica begins the same."""
    # A 1-channel stem's weight gradient comes out with strides DDP's bucket does not expect;
    # harmless (one small copy), so not worth a warning per step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients over the ranks too: every rank's loss
    depends on every rank's contribution to the sum."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, group=_bn_group)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=_bn_group)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """Batch normalisation over the global batch: mean and variance summed over every rank.

    In training each rank sums its images' values, the sums are all-reduced (differentiably, so
    backward sums the gradient with respect to the statistics over the ranks as well), and every
    rank normalises with the same statistics, as one process would with the whole batch. In eval
    mode, or in a single process, it is ``nn.BatchNorm2d``; the state_dict keys are the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        xf = x.float()
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        sums = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
        n, mean = sums[-1], sums[:-1] / sums[-1]
        centred = xf - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n  # two passes: no cancellation
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(var * n / (n - 1), factor)  # the running variance is unbiased
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` synchronised over the ranks (the same parameters and buffers)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if child.affine:  # keep the very Parameter objects, so nothing that holds them goes stale
                sync.weight, sync.bias = child.weight, child.bias
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
