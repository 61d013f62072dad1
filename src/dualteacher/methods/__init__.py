"""Semi-supervised methods, one module each, all driven by the same engine.

Names used throughout (UniMatch's convention):

- ``_x`` labelled, ``_u`` unlabelled; ``_w`` / ``_s`` weak / strong view (``x_u`` is the weak
  view, ``x_s`` the strong one);
- ``student`` (the trained network), ``teachers`` / ``active_teacher`` (EMA copies that make
  pseudo-labels);
- ``pseudo_label`` / ``pl`` (argmax of teacher softmax), ``conf`` (its max probability),
  ``conf_thresh`` (confidence a pseudo-label needs to count), ``mask_ratio`` (share of
  unlabelled pixels above it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import fields, is_dataclass

import numpy as np
import torch

from dualteacher.config import Config, MethodConfig
from dualteacher.errors import ConfigError
from dualteacher.methods.base import Method, StepInfo
from dualteacher.methods.dual_teacher import DualTeacher
from dualteacher.methods.fixmatch import FixMatch
from dualteacher.methods.mean_teacher import MeanTeacher
from dualteacher.methods.supervised import Supervised
from dualteacher.methods.unimatch import UniMatch
from dualteacher.models import SegModel, build_model

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
    "dual_teacher": DualTeacher,
    "fixmatch": FixMatch,
    "unimatch": UniMatch,
}


# Settings of the unlabelled side: a method that trains on labelled images only never reads them.
UNLABELLED_SETTINGS = (
    "data.strong.",
    "data.batch_size_u",
    "method.conf_thresh",
    "method.ema_momentum",
)


def unread_settings(name: str) -> tuple[str, ...]:
    """Config key prefixes that method ``name`` never reads: the other methods' sections
    (``method.unimatch.`` for Dual Teacher) and, for a method without unlabelled images, the
    unlabelled side's settings. Changing one of them cannot change that method's training."""
    sections = [f.name for f in fields(MethodConfig) if is_dataclass(f.default_factory)]
    others = tuple(f"method.{s}." for s in sections if s != name)
    method = METHODS.get(name)
    return others + (UNLABELLED_SETTINGS if method and not method.uses_unlabeled else ())


def build_method(cfg: Config, student: SegModel, make_model: Callable[[], SegModel]) -> Method:
    """The method named by ``cfg.method.name``, around ``student``."""
    if cfg.method.name not in METHODS:
        raise ConfigError(
            f"unknown method method.name={cfg.method.name!r}. Available: {', '.join(METHODS)}"
        )
    return METHODS[cfg.method.name](student, cfg, make_model)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_seeded_method(
    cfg: Config, num_classes: int, device: torch.device, verbose: bool = True
) -> Method:
    """The method of ``cfg`` with a student and teachers built from ``cfg.model``, on
    ``device``. Seeded with ``train.seed`` first: the same initial student and teachers on
    every rank (training) and the same random state after loading a checkpoint (serving)."""
    seed_all(cfg.train.seed)

    def make_model() -> SegModel:
        return build_model(cfg.model, num_classes, verbose=verbose)

    return build_method(cfg, make_model(), make_model).to(device)


__all__ = [
    "METHODS",
    "Method",
    "StepInfo",
    "build_method",
    "build_seeded_method",
    "seed_all",
    "unread_settings",
]
