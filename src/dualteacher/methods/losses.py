"""Pseudo-labels and the masked cross-entropy they are trained with."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dualteacher.config import ClassWeights
from dualteacher.methods.base import phase


@torch.no_grad()
def pseudo_label(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits ``(B, K, H, W)`` -> ``(prob (B, K, H, W), conf (B, H, W), label (B, H, W))``
    with ``conf, label = max(softmax(logits))`` over classes."""
    prob = logits.float().softmax(dim=1)
    conf, label = prob.max(dim=1)
    return prob, conf, label


@torch.no_grad()
def eval_pseudo_label(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pseudo_label`` of ``model`` on ``x`` predicted in eval mode (BatchNorm running
    statistics, no dropout); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with phase("teacher_fwd"):
            return pseudo_label(model(x))
    finally:
        model.train(was_training)


def masked_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    valid: torch.Tensor,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum(CE * keep * weight) / count(valid)``: confident pixels trained, averaged over all
    valid ones.

    ``keep`` (B, H, W) bool marks confident pixels; ``valid`` (B, H, W) bool the pixels that
    count in the denominator (not padding); ``weight`` (B, H, W), optional, each pixel's weight
    (1 without). This is UniMatch's and the official IC loss's normalisation: a batch with few
    confident pixels gives a small loss, not a noisy one.
    """
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index)
    if weight is not None:
        ce = ce * weight
    return (ce * (keep & valid)).sum() / valid.sum().clamp(min=1)


def class_shares(counts: np.ndarray) -> np.ndarray:
    """(K,) each class's share of the labelled pixels from their ``counts`` (K,); zeros when
    there are none."""
    counts = np.asarray(counts, np.float64)
    return counts / counts.sum() if counts.sum() > 0 else np.zeros_like(counts)


def class_weights(counts: np.ndarray, rule: ClassWeights) -> torch.Tensor | None:
    """(K,) loss weights from the labelled pixel ``counts`` (K,) of each class, or None (rule
    ``none``). ``sqrt_inverse``: ``w_c = 1 / sqrt(f_c)``, ``f_c = counts_c / sum(counts)``,
    scaled so that ``sum_c f_c w_c = 1`` (a labelled pixel weighs 1 on average, so the loss
    keeps its scale and the learning rate its meaning); a class without labelled pixels gets
    the largest weight of the others."""
    if rule == ClassWeights.none:
        return None
    freq = class_shares(counts)
    if freq.sum() <= 0:
        return None
    seen = freq > 0
    w = np.zeros_like(freq)
    w[seen] = 1.0 / np.sqrt(freq[seen])
    w[~seen] = w[seen].max()
    w /= (freq * w).sum()
    return torch.tensor(w, dtype=torch.float32)
