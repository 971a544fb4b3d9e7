"""Processes: the ``torchrun`` group a run may live in, and the few collectives the loop needs."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from zoo.devices import resolve_device


@dataclass
class DistContext:
    """Where this process sits: rank, world size, local rank (one GPU per local rank)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistContext:
    """Join the ``torchrun`` process group (if the environment describes one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # Kept for the process's lifetime: several backbones in one command reuse the group
    # (re-creating it on torchrun's rendezvous store hangs).
    atexit.register(_destroy_group)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_device(spec: str, ctx: DistContext) -> torch.device:
    """The device this process trains on: ``spec`` resolved, and each rank on its own GPU under DDP."""
    device = resolve_device(spec)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
    return device


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any of them (all ranks stop together)."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Scalars averaged over the ranks, as floats (one collective, one sync)."""
    keys = list(values)
    stacked = torch.stack([values[k].float().mean().reshape(()) for k in keys])
    if ctx.active:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(keys, stacked.tolist()))
