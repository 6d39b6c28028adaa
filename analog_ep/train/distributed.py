"""Data-parallel EP training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Each rank settles its share of the *global* minibatch and the EP gradients are summed with one
all-reduce, weighted by shard size, so every rank applies the update a single process would
compute on the whole batch. All ranks draw the same permutation and nudge signs from the same
seeded generator, so the run does not depend on the world size beyond float summation order.
Launch with ``torchrun --nproc_per_node N -m analog_ep train ...`` (multi-node: the standard
torchrun ``--nnodes/--rdzv-*`` flags); only rank 0 writes logs and checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (strided: shard sizes differ by ≤ 1)."""
        return slice(self.rank, n, self.world)

    def device(self, requested: str) -> str:
        """One GPU per rank: ``cuda`` becomes ``cuda:<local rank>``."""
        return f"cuda:{self.local_rank}" if requested == "cuda" and self.active else requested

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Element-wise sums over ranks of a list of tensors, in one all-reduce."""
        if not self.active:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        return [p.view_as(t) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def close(self) -> None:
        """Leave the process group after a barrier, so that no rank exits while another still
        uses it (a rank that exited while rank 0 was writing the run directory could abort in
        gloo's threads with SIGABRT)."""
        if self.active and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def init_from_env(device: str) -> Dist:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, ...), or a
    single-process Dist when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist = Dist(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
        torch.distributed.init_process_group(backend)
    return dist
