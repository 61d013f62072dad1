"""Distributed and mixed-precision helpers: one process unless launched by ``torchrun``.

``torchrun --nproc_per_node N -m dualteacher train ...`` sets RANK / WORLD_SIZE; every process
then builds the same student and teachers, joins the process group (NCCL on CUDA, gloo on
CPU), trains its share of every global batch through a DDP-wrapped student and keeps its
teachers equal to everyone else's (``prepare_method``, ``average_buffers``). Only rank 0
prints and writes files.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dualteacher.config import AmpMode, TrainConfig

log = logging.getLogger(__name__)

# DDP's switch for broadcasting buffers before every forward: torch 2.14 renamed it.
_NO_FORWARD_BUFFER_SYNC = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else "broadcast_buffers"
)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if ``torchrun`` started us (NCCL on CUDA, gloo on CPU), bound to
    ``device`` (``dualteacher.device.select_device``: not necessarily ``cuda:LOCAL_RANK``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistInfo(rank, world_size, local_rank)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def any_rank(device: torch.device, *flags: bool | torch.Tensor) -> list[bool]:
    """Each flag OR-ed over the ranks, with one all-reduce and one host synchronisation for
    all of them; a flag may be a 0-d tensor on ``device`` (nothing waits for it before)."""
    t = torch.empty(len(flags), device=device)
    for i, f in enumerate(flags):
        if torch.is_tensor(f):
            t[i] = f  # a device-side copy
        else:
            t[i].fill_(float(f))  # a kernel argument: no host-to-device copy to wait for
    if _enabled():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [v > 0 for v in t.tolist()]


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (``obj`` itself in one process)."""
    if not _enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not _enabled():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself in one process)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown() -> None:
    """Wait for every rank (rank 0 may still be writing files), then leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all ranks, in place."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def average_buffers(module: nn.Module) -> None:
    """Average the floating-point buffers of ``module`` (BatchNorm running statistics) over
    ranks with one all-reduce, so that every rank holds the same teachers and student.

    Each rank's BN layers update their running statistics from its own part of the batch (on
    CPU there is no SyncBN, and teachers in train mode see only the local batch). The update
    is linear in the batch statistics, so averaging after every step gives the running
    averages of the ranks' mean batch statistics (SyncBN's variance would also hold the spread
    between ranks). Integer buffers (``num_batches_tracked``) agree on every rank already.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])  # (sum of numels,)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    views = [v.view_as(b) for b, v in zip(buffers, flat.split([b.numel() for b in buffers]))]
    with torch.no_grad():
        torch._foreach_copy_(buffers, views)  # one fused copy, not one per buffer


def unused_parameters(model: nn.Module, size: int) -> list[str]:
    """Names of trainable parameters of ``model`` that get no gradient from a forward of a
    ``(2, 3, size, size)`` zero batch; DDP must then be built with
    ``find_unused_parameters=True`` (which costs a graph traversal every step, so it is only
    switched on when needed). Probed in eval mode with ``autograd.grad``: no buffer, ``.grad``
    or random state is touched."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    try:
        device = next(iter(params.values())).device
        out = model(torch.zeros(2, 3, size, size, device=device))
        outs = out if isinstance(out, tuple | list) else (out,)
        loss = sum(o.float().sum() for o in outs)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    finally:
        model.train(was_training)
    return [n for n, g in zip(params, grads) if g is None]


def prepare_method(
    method, cfg: TrainConfig, info: DistInfo, device: torch.device
) -> DistributedDataParallel | None:
    """Prepare ``method`` (on ``device``, weights loaded) for training on this process, in
    place: memory format, the teachers equal to rank 0's, and the student's gradient passes
    through DDP (SyncBN on CUDA) and/or ``torch.compile`` (``Method.wrap_student``). Returns the
    DDP wrapper, if any. One process without compile: nothing changes.

    ``train.compile`` compiles the student's training forwards (through DDP under
    ``torchrun``); the teachers' pseudo-label forwards and evaluation stay eager (evaluation
    sees images of many sizes, which would recompile)."""
    student = method.student
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    call: nn.Module = student
    ddp = None
    if info.enabled:
        broadcast_module(method)  # identical student and teachers (they are EMAs of it)
        if device.type == "cuda" and cfg.sync_bn:
            # Swaps BN modules in place and keeps the Parameters, so the optimizer is unchanged.
            # SyncBatchNorm only runs on CUDA; on CPU the buffers are averaged each step.
            nn.SyncBatchNorm.convert_sync_batchnorm(student)
        unused = unused_parameters(student, 2 * getattr(student, "size_divisor", 32))
        if unused and info.is_main:
            log.info(
                "DDP: %d parameters get no gradient (%s ...): find_unused_parameters=True",
                len(unused),
                ", ".join(unused[:3]),
            )
        call = ddp = DistributedDataParallel(
            student,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(unused),
            # Buffers are averaged after every optimizer step (average_buffers) instead of
            # being broadcast from rank 0 before every forward.
            **{_NO_FORWARD_BUFFER_SYNC: False},
        )
    if cfg.compile:
        call = torch.compile(call)
    method.wrap_student(call)
    return ddp


def reseed_rank(seed: int, info: DistInfo, step: int) -> None:
    """Distinct torch random streams per rank for in-step randomness (mixing boxes, dropout)
    when a multi-process run resumes: the checkpoint holds rank 0's RNG state only."""
    if info.enabled:
        torch.manual_seed(hash((seed, info.rank, step)) % 2**63)  # int tuples hash unsalted


def autocast(device: torch.device, amp: AmpMode) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``train.amp`` (bf16 works on CPU and CUDA), or a no-op."""
    if amp == AmpMode.none:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == AmpMode.bf16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: AmpMode) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its gradients underflow without one); bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type) if amp == AmpMode.fp16 else None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings count it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
