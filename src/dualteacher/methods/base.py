"""``Method``: the student, its teachers and one training step that returns a dict of losses.

The engine owns the loop, the optimizer and the data; a method owns what happens inside a step
(which models predict what, how pseudo-labels are made and mixed, which losses apply) and what
happens to its teachers after the optimizer step.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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


class PhaseTimer:
    """Wall-clock seconds per named phase of training steps (``dualteacher bench``).

    Phases do not nest: a phase opened inside another is charged to the outer one. On CUDA
    every phase boundary synchronises, so queued kernels are charged to the phase that
    launched them (this slows the step a little; the timer is for measuring only).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self._open = False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open:
            yield
            return
        self.sync()
        self._open, t0 = True, time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - t0
            self._open = False


_ACTIVE_TIMER: PhaseTimer | None = None
_NO_PHASE = contextlib.nullcontext()


def phase(name: str) -> contextlib.AbstractContextManager:
    """``with phase("teacher_fwd"): ...`` charges the block to ``name`` while a ``PhaseTimer``
    is active (``timing``); otherwise a shared no-op context: no timing, no CUDA sync."""
    return _NO_PHASE if _ACTIVE_TIMER is None else _ACTIVE_TIMER.phase(name)


@contextlib.contextmanager
def timing(timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Make ``timer`` record every ``phase`` block run inside this context."""
    global _ACTIVE_TIMER
    previous, _ACTIVE_TIMER = _ACTIVE_TIMER, timer
    try:
        yield timer
    finally:
        _ACTIVE_TIMER = previous


class Method(nn.Module):
    """Base class. Subclasses set the class flags and implement ``training_step``.

    ``state_dict()`` holds the student and every teacher (they are submodules).
    """

    name: str = ""
    uses_unlabeled: bool = True  # needs the unlabelled loader
    needs_strong_view: bool = False  # needs ``batch_u["image_s"]`` from the data pipeline
    num_strong_views: int = 1  # with needs_strong_view: image_s, image_s2, ... (UniMatch: 2)
    # Wants the labelled masks' class shares (``set_class_prior``) before training.
    needs_class_prior: bool = False
    # Weak views padded bottom/right with the normalised mean colour (mmseg, the official Dual
    # Teacher code) instead of black at a random offset (``data.transforms``).
    official_pad: bool = False

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.ignore_index = IGNORE_INDEX
        # (K,) per-class loss weights (``method.class_weights``), set by the engine from the
        # labelled masks (``set_class_weights``); None: every pixel the same. Not a buffer: a
        # resumed run recomputes them from the same data, and checkpoints keep their keys.
        self.class_weights: torch.Tensor | None = None
        # What ``student_forward`` calls: the student, or the engine's DDP / compiled wrapper
        # of it (``wrap_student``); set without registering, so state_dict keys stay free of
        # "module.".
        object.__setattr__(self, "_student_call", student)

    def wrap_student(self, wrapper: Callable) -> None:
        """Route every ``student_forward`` through ``wrapper`` (DDP, torch.compile)."""
        object.__setattr__(self, "_student_call", wrapper)

    def student_forward(self, x: torch.Tensor, **kwargs):
        """The student's forward for every pass that takes gradient. Under DDP it goes through
        the DDP wrapper, which all-reduces the gradients in backward; forwards without
        gradient (pseudo-labels) may call ``self.student`` directly."""
        with phase("student_fwd"):
            return self._student_call(x, **kwargs)

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

    def diagnostics(self) -> dict[str, float]:
        """Extra scalars for the log rows (``metrics.jsonl``, TensorBoard), computed only on
        logged steps: things that cost more than a loss term, e.g. teacher-student distances.
        """
        return {}

    # --- helpers ---------------------------------------------------------------------------
    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weigh each labelled pixel's cross-entropy by its class: ``weights`` (K,), or None."""
        device = next(self.student.parameters()).device
        self.class_weights = None if weights is None else weights.float().to(device)

    def set_class_prior(self, shares: torch.Tensor) -> None:
        """The labelled masks' class pixel shares (K,), summing to 1, for methods that set
        ``needs_class_prior``; others ignore it."""

    def supervised_loss(self, logits_x: torch.Tensor, mask_x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels, mean over the non-ignored ones (with class
        weights: the weighted mean, ``sum(w_y CE) / sum(w_y)``, as ``F.cross_entropy``)."""
        return F.cross_entropy(logits_x, mask_x, self.class_weights, ignore_index=self.ignore_index)

    def make_teacher(self, make_model: Callable[[], SegModel]) -> SegModel:
        """A fresh model of the student's architecture that never receives gradients."""
        teacher = make_model().disable_drop_path()  # official: teachers without drop path
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher
