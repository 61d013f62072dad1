"""One optimizer step of a method, shared by training, ``compare``'s probe and ``bench``.

``accum_steps`` micro-batches: next labelled (and unlabelled) batch -> ``training_step`` under
autocast -> backward of ``loss / accum_steps`` (scaled for fp16); then the optimizer and
scheduler step, BN buffers averaged over ranks, and ``after_step`` (teacher EMA). Under DDP
the gradients are all-reduced once, in the last micro-batch's backward (``no_sync`` before).
Every part runs inside a ``phase`` so that ``bench`` can break the step down.

With a ``RunGuard`` (training), a step whose loss is not finite is undone instead: gradients
dropped, BN buffers restored, no optimizer step, no EMA; the scheduler still advances. The
backward still runs, so that DDP's all-reduce stays matched across ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from dualteacher.config import TrainConfig
from dualteacher.engine.distributed import (
    DistInfo,
    autocast,
    average_buffers,
    grad_scaler,
    wrap_student,
)
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


class StepRunner:
    """Runs optimizer steps of ``method`` with the settings of ``cfg`` (``train.*``).

    Building it prepares the method for this process (``wrap_student``: channels-last, DDP,
    compile), so build one per run, after loading a checkpoint into the method.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler,
        device: torch.device,
        cfg: TrainConfig,
        dist: DistInfo | None = None,
        guard=None,
    ):
        if cfg.accum_steps < 1:
            raise ConfigError(f"train.accum_steps={cfg.accum_steps} must be at least 1")
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler
        self.device, self.cfg = device, cfg
        self.dist = dist or DistInfo()
        self.scaler = grad_scaler(device, cfg.amp)
        self.ddp = wrap_student(method, cfg, self.dist, device)
        self.guard = guard  # engine.guard.RunGuard: non-finite losses

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` for every micro-batch but the last (local gradient accumulation)."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def __call__(self, it_x: Iterator[Batch], it_u: Iterator[Batch] | None, info: StepInfo) -> dict:
        """One optimizer step on the next ``accum_steps`` batches; returns the method's loss
        dict (averaged over the micro-batches)."""
        accum = self.cfg.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard is not None:
            self.guard.begin_step(self.method)
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
        # a non-finite micro-batch loss makes the averaged one non-finite too
        if self.guard is not None and self.guard.skip_step(logged["loss"], self.method, info.step):
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


def _accumulate(total: dict, out: dict, accum: int) -> dict:
    """``total`` plus ``out / accum``, key by key (tensors detached)."""
    for k, v in out.items():
        v = v.detach() if torch.is_tensor(v) else v
        total[k] = total.get(k, 0) + v / accum
    return total
