"""``Method``: the student, its teachers and one training step that returns a dict of losses.

The engine owns the loop, the optimizer and the data; a method owns what happens inside a step
(which models predict what, how pseudo-labels are made and mixed, which losses apply) and what
happens to its teachers after the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dualteacher.config import IGNORE_INDEX, Config
from dualteacher.models import SegModel


@dataclass(frozen=True)
class StepInfo:
    """Where a training step sits in the run. ``epoch_steps`` is defined by the engine."""

    step: int  # global optimizer step, from 0
    epoch_steps: int  # steps per epoch

    @property
    def epoch(self) -> int:
        return self.step // self.epoch_steps

    @property
    def iter_in_epoch(self) -> int:
        return self.step % self.epoch_steps


Batch = dict[str, torch.Tensor]


class Method(nn.Module):
    """Base class. Subclasses set the class flags and implement ``training_step``.

    ``state_dict()`` holds the student and every teacher (they are submodules).
    """

    name: str = ""
    uses_unlabeled: bool = True  # needs the unlabelled loader
    needs_strong_view: bool = False  # needs ``batch_u["image_s"]`` from the data pipeline
    num_strong_views: int = 1  # with needs_strong_view: image_s, image_s2, ... (UniMatch: 2)

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.ignore_index = IGNORE_INDEX
        # The engine may replace this with a DistributedDataParallel wrapper of the student;
        # set without registering, so state_dict keys stay free of "module.".
        object.__setattr__(self, "student_forward", student)

    # --- the per-step API used by the engine ---------------------------------------------
    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        """Losses of one step: ``{"loss": total, "loss_x": ..., ...}`` (tensors or floats).

        Only ``"loss"`` is back-propagated; every other key is logged.
        """
        raise NotImplementedError

    def after_step(self, info: StepInfo) -> None:
        """Called after the optimizer step (teacher updates go here)."""

    def eval_models(self) -> dict[str, nn.Module]:
        """Models to validate, by name; the first is the one whose mIoU picks ``best.pt``."""
        return {"student": self.student}

    # --- helpers ---------------------------------------------------------------------------
    def supervised_loss(self, logits_x: torch.Tensor, mask_x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels, mean over the non-ignored ones."""
        return F.cross_entropy(logits_x, mask_x, ignore_index=self.ignore_index)

    def make_teacher(self, make_model: Callable[[], SegModel]) -> SegModel:
        """A fresh model of the student's architecture that never receives gradients."""
        teacher = make_model().disable_drop_path()  # official: teachers without drop path
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher
