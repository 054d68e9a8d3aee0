"""Plain torch.distributed data parallelism, initialised from the launcher's environment
(torchrun or `accelerate launch` set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Gradients are all-reduced by hand (one flat buffer per step) instead of wrapping the model in DDP:
gates and quantizer ranges may legitimately get no gradient (closed levels, identity quantizers), which DDP's
unused-parameter checks turn into errors, and the regularizer's gradient must be counted once, not per rank.
Every rank draws the same gate samples (see loop.py), so the reduced gradient is the full-batch gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import TrainError


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, grads: list[torch.Tensor]) -> None:
        """Sum the tensors over ranks, in place, with one collective."""
        if not self.active or not grads:
            return
        import torch.distributed as dist

        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Make rank 0's values everyone's (start from identical trainable tensors)."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    if option == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was requested but no CUDA device is available; use --device cpu")
    if option == "cuda" or (option == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_option: str) -> Dist:
    """One process (WORLD_SIZE unset or 1) or one rank of a launched group: gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(0, 1, resolve_device(device_option))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    device = resolve_device(device_option, int(os.environ.get("LOCAL_RANK", rank)))
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        initialized_here = True
    return Dist(rank, world_size, device, initialized_here)
