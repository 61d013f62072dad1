"""The one mIoU definition of the project: a dataset-level confusion matrix.

Pixels are accumulated over the whole validation set (not averaged per image), pixels whose
ground truth is ``ignore_index`` are dropped, and under DDP the matrix is summed across ranks
once at the end. IoU of class c = TP / (TP + FP + FN); a class that appears neither in the
ground truth nor in the predictions has no IoU (NaN) and is left out of the mean, as in
mmsegmentation and torchvision's references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class SegMetrics:
    miou: float  # mean IoU in percent over classes with a defined IoU
    iou: list[float]  # per-class IoU in percent, NaN where undefined
    acc: float  # pixel accuracy in percent
    num_pixels: int  # scored (non-ignored) pixels
    # (K, K) pixel counts, confusion[target][pred]: what the IoUs were computed from
    confusion: list[list[int]] | None = field(default=None, repr=False)

    def as_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.iou))]
        return {
            "miou": self.miou,
            "acc": self.acc,
            "num_pixels": self.num_pixels,
            "iou": {n: (None if math.isnan(v) else v) for n, v in zip(names, self.iou)},
        }


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` matrix ``mat[target, pred]`` of pixel counts."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` and ``target`` are integer tensors of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
            )
        k = self.num_classes
        keep = target != self.ignore_index
        t = target[keep].to(torch.int64)
        p = pred[keep].to(torch.int64)
        if t.numel() and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"target has values outside [0, {k}) other than {self.ignore_index}")
        self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).to(self.mat.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all DDP ranks (no-op in a single process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def compute(self) -> SegMetrics:
        mat = self.mat.double()
        tp = mat.diag()
        union = mat.sum(0) + mat.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) * 100 if valid.any() else float("nan")
        total = mat.sum()
        acc = float(tp.sum() / total) * 100 if total > 0 else float("nan")
        return SegMetrics(
            miou=miou,
            iou=[float(v) * 100 for v in iou],
            acc=acc,
            num_pixels=int(total),
            confusion=self.mat.cpu().tolist(),
        )
