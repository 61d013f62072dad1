"""Evaluation: whole-image, sliding-window or resized inference, scored by ``metrics.py``.

Every validation image is scored exactly once at its original resolution: under DDP rank ``r``
of ``W`` takes images ``r, r + W, ...`` (no padding duplicates) and the confusion matrices
are summed once at the end.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from dualteacher.config import EvalConfig, EvalMode
from dualteacher.engine.device import cudnn_benchmark
from dualteacher.errors import ConfigError
from dualteacher.metrics import ConfusionMatrix, SegMetrics


def check_eval_config(cfg: EvalConfig) -> None:
    """Raise ``ConfigError`` for settings that cannot work (checked before training starts)."""
    if cfg.mode == EvalMode.sliding and not 0 < cfg.stride <= cfg.crop_size:
        raise ConfigError(
            f"eval.stride={cfg.stride} must be between 1 and eval.crop_size={cfg.crop_size}: a "
            "larger stride leaves pixels that no window covers"
        )
    if cfg.mode == EvalMode.resize and cfg.short_side < 1:
        raise ConfigError(f"eval.short_side={cfg.short_side} must be a positive number of pixels")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Offsets of windows of ``crop`` every ``stride`` pixels along a side of ``size``; the
    last window is moved back to end at the border (mmseg's convention), so every pixel is
    covered and no window leaves the image. A side shorter than ``crop`` gets one window."""
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def _sliding(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    crop: int,
    stride: int,
    windows_per_forward: int = 1,
) -> torch.Tensor:
    """Average logits over windows of ``crop`` every ``stride`` pixels.

    ``image`` (B, 3, H, W) -> logits (B, K, H, W). Windows are cut from the image as they are
    (a side shorter than ``crop`` gives a shorter window; the model pads to its divisor) and
    ``windows_per_forward`` of them go through the model in one batch.
    """
    check_eval_config(EvalConfig(mode=EvalMode.sliding, crop_size=crop, stride=stride))
    b, _, h, w = image.shape
    logits = torch.zeros(b, num_classes, h, w, dtype=torch.float32, device=image.device)
    count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=image.device)
    boxes = [
        (y0, x0, min(y0 + crop, h), min(x0 + crop, w))
        for y0 in window_starts(h, crop, stride)
        for x0 in window_starts(w, crop, stride)
    ]
    for i in range(0, len(boxes), max(1, windows_per_forward)):
        chunk = boxes[i : i + max(1, windows_per_forward)]
        # (len(chunk) * B, 3, h_win, w_win): all windows of an image have the same size
        out = model(torch.cat([image[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk])).float()
        for j, (y0, x0, y1, x1) in enumerate(chunk):
            logits[:, :, y0:y1, x0:x1] += out[j * b : (j + 1) * b]
            count[:, :, y0:y1, x0:x1] += 1
    return logits / count


@torch.no_grad()
def predict_logits(
    model: nn.Module, image: torch.Tensor, cfg: EvalConfig, num_classes: int
) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` at the input's resolution for normalised ``image`` (B, 3, H, W)."""
    h, w = image.shape[-2:]
    if cfg.mode == EvalMode.whole:
        return model(image).float()
    if cfg.mode == EvalMode.sliding:
        return _sliding(model, image, num_classes, cfg.crop_size, cfg.stride, cfg.batch_size)
    # resize: short side to cfg.short_side, predict, upsample the logits to the input size
    scale = cfg.short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    logits = model(small).float()
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def _batches(loader: DataLoader, device: torch.device):
    """Group consecutive samples of equal size into batches (whole images differ in size)."""
    for samples in loader:
        groups: dict[tuple[int, int], list[dict]] = {}
        for s in samples:
            groups.setdefault(tuple(s["image"].shape[-2:]), []).append(s)
        for group in groups.values():
            yield (
                torch.stack([s["image"] for s in group]).to(device, non_blocking=True),
                torch.stack([s["mask"] for s in group]).to(device, non_blocking=True),
            )


@torch.no_grad()
def confusion_matrix(
    model: nn.Module,
    dataset,
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device,
    ignore_index: int = 255,
    rank: int = 0,
    world_size: int = 1,
) -> ConfusionMatrix:
    """This rank's confusion matrix: images ``rank, rank + world_size, ...`` of ``dataset``
    (an ``EvalSet``), each scored once at its original resolution; not yet reduced."""
    was_training = model.training
    model.eval()
    part = Subset(dataset, range(rank, len(dataset), world_size))
    batch_size = cfg.batch_size if cfg.mode == EvalMode.whole else 1
    # A private generator: starting an iterator must not consume the global RNG (exact resume).
    loader = DataLoader(
        part, batch_size=batch_size, collate_fn=list, generator=torch.Generator().manual_seed(0)
    )
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    # Whole and resized images come in many sizes: cuDNN would autotune each one; sliding
    # windows have one size and keep the run's setting.
    autotune = torch.backends.cudnn.benchmark and cfg.mode == EvalMode.sliding
    with cudnn_benchmark(autotune):
        for image, mask in _batches(loader, device):
            logits = predict_logits(model, image, cfg, num_classes)
            cm.update(logits.argmax(1), mask)
    model.train(was_training)
    return cm


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device,
    ignore_index: int = 255,
    rank: int = 0,
    world_size: int = 1,
) -> SegMetrics:
    """mIoU of ``model`` on ``dataset`` (an ``EvalSet``): each rank scores its share of the
    images (``confusion_matrix``), the matrices are summed once across ranks."""
    cm = confusion_matrix(model, dataset, num_classes, cfg, device, ignore_index, rank, world_size)
    cm.all_reduce()
    return cm.compute()


def format_table(metrics: dict[str, SegMetrics], classes: list[str]) -> str:
    """Per-class IoU table, one column per evaluated model."""
    names = list(metrics)
    width = max(12, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}" + "".join(f"{n:>12}" for n in names)]
    for i, c in enumerate(classes):
        cells = "".join(f"{metrics[n].iou[i]:>12.2f}" for n in names)
        lines.append(f"{c:<{width}}" + cells.replace("nan", "  -"))
    lines.append(f"{'mIoU':<{width}}" + "".join(f"{metrics[n].miou:>12.2f}" for n in names))
    lines.append(f"{'pixel acc':<{width}}" + "".join(f"{metrics[n].acc:>12.2f}" for n in names))
    return "\n".join(lines)


def evaluate_checkpoint(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), models: str = "student"
) -> dict[str, SegMetrics]:
    """Evaluate a checkpoint on the validation set of the data it was trained on.

    ``overrides`` (``key=value``) change the stored config, e.g. ``eval.mode=sliding`` or
    ``data.root=/other/path``. ``models``: ``student``, ``all`` (student and teachers) or a
    comma-separated list of names.
    """
    from dualteacher.engine.run import build_run

    run = build_run(checkpoint=path, overrides=overrides)
    return evaluate_run(run, models, source=str(path))


def evaluate_run(run, models: str = "student", source: str = "the run") -> dict[str, SegMetrics]:
    """Evaluate the models named by ``models`` (see ``evaluate_checkpoint``) of a built ``Run``
    on its validation set."""
    available = run.method.eval_models()
    wanted = list(available) if models == "all" else models.split(",")
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise ConfigError(
            f"{source} has no model named {', '.join(unknown)}; it has: {', '.join(available)}"
        )
    return {
        name: evaluate(
            available[name],
            run.val_set,
            run.bundle.num_classes,
            run.cfg.eval,
            run.device,
            run.bundle.ignore_index,
            run.dist.rank,
            run.dist.world_size,
        )
        for name in wanted
    }
