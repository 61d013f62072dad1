"""One optimizer step of a method, shared by training, ``compare``'s probe and ``bench``.

``accum_steps`` micro-batches: next labelled (and unlabelled) batch -> ``training_step`` under
autocast -> backward of ``loss / accum_steps`` (scaled for fp16); then the optimizer and
scheduler step, BN buffers averaged over ranks, and ``after_step`` (teacher EMA). Under DDP
the gradients are all-reduced once, in the last micro-batch's backward (``no_sync`` before).
Every part runs inside a ``phase`` so that ``bench`` can break the step down.

With ``skip_nonfinite`` (training, and so the probe and ``bench``), a step whose loss is not
finite on any rank is undone instead: gradients dropped, BN buffers restored, no optimizer
step, no EMA; the scheduler still advances. The backward still runs, so that DDP's all-reduce
stays matched across ranks. That decision is the step's one host synchronisation (and, under
DDP, its one extra all-reduce, which also carries the ranks' stop flags).

The runner does not change the method: ``engine.distributed.prepare_method`` (called by
``engine.run.build_training``) wraps it for DDP / compile before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from dualteacher.checkpoint import rng_state, set_rng_state
from dualteacher.config import TrainConfig
from dualteacher.engine.distributed import DistInfo, any_rank, autocast, average_buffers
from dualteacher.errors import ConfigError
from dualteacher.methods.base import Batch, Method, StepInfo, phase


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """Move a batch to ``device``; images ``(B, 3, H, W)`` in NHWC memory with ``channels_last``."""
    out = {}
    for k, v in batch.items():
        v = v.to(device, non_blocking=True)
        out[k] = (
            v.contiguous(memory_format=torch.channels_last) if channels_last and v.dim() == 4 else v
        )
    return out


class BufferSnapshot:
    """The buffers of a module (BatchNorm running statistics and counts) at one moment, in
    storage allocated once: ``take`` and ``restore`` are one fused copy each, with no
    allocation and no host synchronisation.

    Build it after the module is on its device and prepared: it holds the buffer tensors
    themselves (SyncBN conversion and DDP keep them; ``Module.to`` to another device would
    not).
    """

    def __init__(self, module: torch.nn.Module):
        self.buffers = list(module.buffers())
        self.saved = [torch.empty_like(b) for b in self.buffers]

    @torch.no_grad()
    def take(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


class StepRunner:
    """Runs optimizer steps of a prepared ``method`` with the settings of ``cfg`` (``train.*``).

    ``ddp``: the DDP wrapper of the student (``prepare_method``), for ``no_sync``; ``scaler``:
    the fp16 loss scaler. After each call ``skipped`` says whether the step was skipped for a
    non-finite loss and ``stop_requested`` whether ``stop()`` was true on any rank.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler,
        cfg: TrainConfig,
        device: torch.device,
        *,
        ddp: DistributedDataParallel | None = None,
        scaler: torch.amp.GradScaler | None = None,
        dist: DistInfo | None = None,
        skip_nonfinite: bool = False,
    ):
        if cfg.accum_steps < 1:
            raise ConfigError(f"train.accum_steps={cfg.accum_steps} must be at least 1")
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler
        self.cfg, self.device, self.ddp, self.scaler = cfg, device, ddp, scaler
        self.dist = dist or DistInfo()
        self.snapshot = BufferSnapshot(method) if skip_nonfinite else None
        self._rng: dict | None = None  # RNG at the step's start, with several micro-batches
        self.skipped = False
        self.stop_requested = False

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` for every micro-batch but the last (local gradient accumulation)."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def __call__(
        self,
        it_x: Iterator[Batch],
        it_u: Iterator[Batch] | None,
        info: StepInfo,
        stop: Callable[[], bool] | None = None,
    ) -> dict:
        """One optimizer step on the next ``accum_steps`` batches; returns the method's loss
        dict (averaged over the micro-batches). ``stop()``: whether this rank wants to stop
        after the step (asked after the backward pass, as late as the step allows)."""
        accum = self.cfg.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        if self.snapshot is not None:
            self.snapshot.take()
            # A later micro-batch's read may fail after a forward pass used the RNG.
            self._rng = rng_state(self.device) if accum > 1 else None
        logged: dict = {}
        for i in range(accum):
            with phase("data"):
                batch_x = to_device(next(it_x), self.device, self.cfg.channels_last)
                batch_u = None
                if it_u is not None:
                    batch_u = to_device(next(it_u), self.device, self.cfg.channels_last)
            with self._no_sync(last=i == accum - 1):
                self.method.train()
                with autocast(self.device, self.cfg.amp):
                    out = self.method.training_step(batch_x, batch_u, info)
                loss = out["loss"] / accum if accum > 1 else out["loss"]
                with phase("backward"):
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
            logged = out if accum == 1 else _accumulate(logged, out, accum)
        wants_stop = stop is not None and stop()
        self.skipped, self.stop_requested = False, wants_stop
        if self.snapshot is not None:
            # a non-finite micro-batch loss makes the averaged one non-finite too
            nonfinite = ~torch.isfinite(logged["loss"].detach()).all()
            self.skipped, self.stop_requested = any_rank(self.device, nonfinite, wants_stop)
        if self.skipped:
            self.snapshot.restore()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return logged
        with phase("optimizer"):
            if self.scaler:
                self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
        if self.dist.enabled:
            with phase("sync"):
                average_buffers(self.method)
        with phase("ema"):
            self.method.after_step(info)
        return logged

    def rewind(self) -> None:
        """Undo what the current, unfinished step changed before it failed (a data read that
        raised): buffers and, with several micro-batches, the RNG, back to the step's start."""
        if self.snapshot is not None:
            self.snapshot.restore()
        if self._rng is not None:
            set_rng_state(self._rng, self.device)


def _accumulate(total: dict, out: dict, accum: int) -> dict:
    """``total`` plus ``out / accum``, key by key (tensors detached)."""
    for k, v in out.items():
        v = v.detach() if torch.is_tensor(v) else v
        total[k] = total.get(k, 0) + v / accum
    return total
