"""Evaluation: whole-image, sliding-window or resized inference (``models.windows``), scored by
``metrics.py``.

Every validation image is scored exactly once at its original resolution: under DDP rank ``r``
of ``W`` takes images ``r, r + W, ...`` (no padding duplicates) and the confusion matrices
are summed once at the end.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from dualteacher.config import EvalConfig, EvalMode
from dualteacher.device import cudnn_benchmark
from dualteacher.engine.run import Run, build_run
from dualteacher.errors import ConfigError
from dualteacher.metrics import ConfusionMatrix, SegMetrics
from dualteacher.models.windows import check_eval_config, predict_logits, window_starts


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
    run = build_run(checkpoint=path, overrides=overrides)
    return evaluate_run(run, models, source=str(path))


def evaluate_run(
    run: Run, models: str = "student", source: str = "the run"
) -> dict[str, SegMetrics]:
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


# check_eval_config, predict_logits and window_starts live in models.windows (serving uses them
# too); importable from here as before.
__all__ = [
    "check_eval_config",
    "confusion_matrix",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_run",
    "format_table",
    "predict_logits",
    "window_starts",
]
