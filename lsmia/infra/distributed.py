"""Several processes launched by ``torchrun``: process group, per-rank device, collectives.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in every
process. Without them (or with ``WORLD_SIZE=1``) every function here is a no-op for one
process: world size 1, rank 0, main process, collectives return their input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return all(key in os.environ for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK")) and int(os.environ["WORLD_SIZE"]) > 1


def active() -> bool:
    """True while a process group with more than one process is set up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the group (1 without one)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """True in rank 0, which alone writes files and tracks; also before/after the group (from ``RANK``)."""
    if active():
        return dist.get_rank() == 0
    return not launched() or int(os.environ["RANK"]) == 0


def backend(use_cuda: bool | None = None) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise; ``use_cuda`` None means 'if CUDA is available'."""
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    return "nccl" if use_cuda else "gloo"


def init(use_cuda: bool | None = None) -> bool:
    """Set up the process group of a torchrun launch; False (nothing done) when not launched or already set up."""
    if not launched() or dist.is_initialized():
        return False
    name = backend(use_cuda)
    if name == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=name)
    return True


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA device under torchrun, else ``device`` unchanged."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", local_rank())
    return device


@contextmanager
def process_group(use_cuda: bool | None = None) -> Iterator[None]:
    """Set up the group of a torchrun launch for the block and tear it down after; a no-op otherwise."""
    created = init(use_cuda)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where collectives run: the current CUDA device for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on every rank), by rank, on the CPU."""
    if not active():
        return [tensor.cpu()]
    device = _collective_device()
    local = tensor.detach().to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over ranks (``sum``, ``mean``, ``min`` or ``max``) and return it.

    The tensor must live where the backend works (CUDA for nccl); one process returns it unchanged.
    """
    if not active():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor.div_(dist.get_world_size())
    return tensor
