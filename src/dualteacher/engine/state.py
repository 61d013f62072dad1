"""``TrainState``: everything a checkpoint holds and a resumed run restores, in one object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dualteacher.checkpoint import load_method_state, rng_state, set_rng_state
from dualteacher.config import Config, to_dict
from dualteacher.engine.optim import load_keeping_config


class TrainState:
    """The state of a training run: the method (student and teachers), optimizer, scheduler,
    fp16 loss scaler, RNG states, and the run's progress and counters.

    ``state_dict()`` is the checkpoint dict (see ``dualteacher.checkpoint``), ``load_state_dict``
    restores all of it. Progress: ``step`` (optimizer steps done), ``best`` (student mIoU and
    its step), ``history`` (validations), ``train_seconds``; counters (``ckpt["guard"]``):
    ``bad_steps`` (skipped for a non-finite loss), ``bad_samples`` (replaced under
    ``data.skip_bad``) and ``bad_files``.
    """

    def __init__(
        self,
        cfg: Config,
        classes: list[str],
        palette: list,
        method: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        scaler: torch.amp.GradScaler | None,
        device: torch.device,
    ):
        self.cfg, self.classes, self.palette = cfg, list(classes), list(palette)
        self.method, self.optimizer, self.scheduler, self.scaler = (
            method,
            optimizer,
            scheduler,
            scaler,
        )
        self.device = device
        self.step = 0
        self.best: dict[str, Any] = {"miou": float("-inf"), "step": 0}
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.bad_steps = 0
        self.bad_samples = 0
        self.bad_files: list[str] = []
        self.loss_ref: float | None = None  # the loss level of the last good checkpoint
        self.data: dict | None = None  # data.fingerprint of the run's data
        # train.init_from: the checkpoint whose weights started the run (engine.init_from)
        self.init_from: dict | None = None

    def counters(self) -> dict[str, int]:
        """For the metrics rows."""
        return {"bad_steps": self.bad_steps, "bad_samples": self.bad_samples}

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "classes": self.classes,
            "palette": self.palette,
            "state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "rng": rng_state(self.device),
            "guard": {
                "bad_steps": self.bad_steps,
                "bad_samples": self.bad_samples,
                "bad_files": list(self.bad_files),
                "loss_ref": self.loss_ref,
            },
            "data": self.data,
            "init_from": self.init_from,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, ckpt: dict[str, Any], path: str | Path = "checkpoint") -> None:
        """Restore a checkpoint written by ``state_dict`` (``path`` names it in errors)."""
        load_method_state(self.method, ckpt, path)
        load_keeping_config(self.optimizer, self.scheduler, ckpt)  # a changed optim.* applies
        if self.scaler is not None and ckpt.get("grad_scaler"):
            self.scaler.load_state_dict(ckpt["grad_scaler"])  # the fp16 loss scale continues
        self.step, self.best = ckpt["step"], ckpt["best"]
        self.history, self.train_seconds = ckpt["history"], ckpt["train_seconds"]
        guard = ckpt.get("guard", {})
        self.bad_steps = guard.get("bad_steps", 0)
        self.bad_samples = guard.get("bad_samples", 0)
        self.bad_files = list(guard.get("bad_files", []))
        self.loss_ref = guard.get("loss_ref")
        self.init_from = ckpt.get("init_from")
        set_rng_state(ckpt["rng"], self.device)
