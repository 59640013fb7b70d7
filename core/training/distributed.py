"""Data-parallel training and scoring with ``torch.distributed`` (launched by ``torchrun``, or by ``--nproc N``).

Under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) every process builds the same model
from the same seed, walks the same seeded permutation of the training images and takes its share of each
global batch (the per-batch equivalent of a ``DistributedSampler``: rank ``r`` of ``W`` gets a contiguous slice).
After each backward pass the gradients are all-reduced in one flat buffer; the local loss is weighted by the
slice's share of the batch, so the averaged gradient is the gradient of the global batch's mean loss, exactly
as one process computes it. BatchNorm statistics are averaged over the ranks at the end of every epoch, before
validation (which every rank runs on all validation images, so all ranks take the same early-stop decisions).
Rank 0 alone writes the run folder (the same format as a single process). NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
        per, extra = divmod(n, self.world)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))


def launched() -> bool:
    """True inside a torchrun worker with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_main() -> bool:
    """True for a single process and for rank 0 of a torchrun job (the one that writes files)."""
    return not launched() or int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> DistContext | None:
    """Join the process group when launched by torchrun (idempotent); None for a single process. On CUDA each
    rank takes the GPU of its local rank (NCCL), on CPU gloo is used."""
    if not launched():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
        atexit.register(_leave)
    return DistContext(rank, world, local, device)


def _leave() -> None:
    """Leave the process group before the interpreter ends: a rank that exits with the group alive (one that
    finished its share first) could abort in the backend's destructor ("terminate called without an active
    exception"). No barrier here: after a failure the other ranks may never come."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):
            pass


def broadcast_object(value: Any, ctx: DistContext | None) -> Any:
    """Rank 0's ``value`` on every rank."""
    if ctx is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext | None) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if ctx is None:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def all_reduce_gradients(module: torch.nn.Module, ctx: DistContext | None) -> None:
    """Sum the gradients over the ranks (one flat buffer). The local losses are already weighted by
    :func:`loss_weight`, so the sum is the gradient of the global batch's mean loss."""
    if ctx is None:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def loss_weight(n_local: int, n_global: int, ctx: DistContext | None) -> float:
    """The factor of a rank's mean loss over its ``n_local`` images: its share of the global batch."""
    return 1.0 if ctx is None else n_local / max(1, n_global)


def average_buffers(module: torch.nn.Module, ctx: DistContext | None) -> None:
    """Average the float buffers (BatchNorm running statistics) over the ranks."""
    if ctx is None:
        return
    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b.data)
                b.data /= ctx.world


def all_sum(value: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """``value`` summed over the ranks."""
    if ctx is None:
        return value
    out = value.clone()
    dist.all_reduce(out)
    return out


STOP_CHECK_EVERY = 16  # under torchrun the ranks agree on a stop request every this many batches (one tiny all-reduce)


def stop_requested(stop: Any, batch: int, ctx: DistContext | None) -> bool:
    """Whether to stop before ``batch`` (0-based) of an epoch. One process: ``stop`` is set. Under torchrun every rank
    must leave at the same batch (a rank that left alone would wait forever in the next all-reduce), so the ranks
    decide together, at the first batch and every :data:`STOP_CHECK_EVERY` batches: any rank asked, all stop."""
    asked = stop is not None and stop.is_set()
    if ctx is None:
        return asked
    if batch % STOP_CHECK_EVERY:
        return False
    flag = torch.tensor([1 if asked else 0], device=ctx.device)
    dist.all_reduce(flag)
    return bool(flag.item())


def gather_objects(value: Any, ctx: DistContext | None) -> list[Any]:
    """Every rank's ``value``, in rank order (a single process: ``[value]``)."""
    if ctx is None:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def launch(nproc: int, argv: list[str], extra: list[str] | None = None) -> int:
    """Run ``python -m core ARGV`` as ``nproc`` processes under torchrun's elastic agent on this machine
    (``--standalone``: a free local rendezvous); ``extra`` are more torchrun options. Returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
           *(extra or []), "-m", "core", *argv]
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the whole process group: torchrun and the ranks stop themselves
            continue
