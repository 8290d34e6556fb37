"""One process or several under torchrun: DistributedDataParallel with nccl on CUDA and gloo on CPU.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE 1) everything runs in this
process. Each rank takes every world_size-th window of each global batch, and DDP averages the gradients, so n
processes train exactly as one process with the same global batch (up to float summation order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "mps":
        raise ValueError("fine-tuning runs on cuda or cpu (device: mps is for the forecast only)")
    return torch.device(name)


def init_world(device: str) -> World:
    """Join the torchrun process group when there is one; the device of this rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if size <= 1:
        return World(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dev)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(world: World, flag: bool) -> bool:
    """Rank 0's decision (e.g. stop early) for every rank."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=world.device if world.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())


def any_flag(world: World, flag: bool) -> bool:
    """True on every rank when the flag is true on any (e.g. a non-finite loss: every rank stops together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
