"""``dualteacher eval CHECKPOINT --report DIR``: an evaluation report a person can read.

Written to ``DIR``:

- ``iou.md`` / ``iou.json``: per-class IoU, mIoU and pixel accuracy of every evaluated model;
- ``confusion.png``: the row-normalised confusion matrix of the first model (the student by
  default); ``confusion_<model>.png`` for each further model;
- ``samples.png``: image | ground truth | prediction of each model for a few validation
  images spread over the set, with a colour legend.

The numbers are the ones ``dualteacher eval`` prints: the same evaluation (``cfg.eval``), the
same confusion matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dualteacher.config import to_dict
from dualteacher.engine.distributed import is_main_process
from dualteacher.engine.evaluate import evaluate_run, format_table
from dualteacher.engine.run import Run, build_run
from dualteacher.metrics import SegMetrics
from dualteacher.outputs import write_json, write_text, writes_under
from dualteacher.plots import label_colors, plot_confusion, plot_samples
from dualteacher.serving.segmenter import Segmenter


def _cell(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def format_markdown(metrics: dict[str, SegMetrics], classes: list[str], header: str) -> str:
    """Per-class IoU as a Markdown table, one column per model."""
    names = list(metrics)
    lines = [
        header,
        "",
        "| class | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, c in enumerate(classes):
        lines.append(f"| {c} | " + " | ".join(_cell(metrics[n].iou[i]) for n in names) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{metrics[n].miou:.2f}**" for n in names) + " |")
    lines.append("| pixel acc. | " + " | ".join(f"{metrics[n].acc:.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def _sample_rows(run: Run, models: dict[str, torch.nn.Module], num: int) -> list[dict]:
    """``num`` validation images spread evenly over the set, with every model's prediction
    (run as ``predict`` runs them: a ``serving.segmenter.Segmenter``)."""
    for model in models.values():
        model.eval()
    segmenter = Segmenter(models, run.cfg, run.bundle.classes, run.bundle.palette, run.device)
    val = run.val_set
    n = len(val)
    if n == 0 or num <= 0:
        return []
    indices = sorted({round(i) for i in np.linspace(0, n - 1, min(num, n))})
    rows = []
    for i in indices:
        item = val[i]
        raw = val.source.load(i)
        image = item["image"].unsqueeze(0).to(run.device)  # (1, 3, H, W) normalised
        preds = {}
        for name in models:
            logits = segmenter.logits(image, name)
            preds[name] = logits.argmax(1)[0].cpu().numpy().astype(np.int64)
        mask = item["mask"].numpy() if "mask" in item else np.full(raw.image.shape[:2], 255)
        rows.append({"name": raw.name, "image": raw.image, "mask": mask, "preds": preds})
    return rows


@writes_under("out_dir")
def write_report(
    checkpoint: str | Path,
    out_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    models: str = "student",
    num_samples: int = 8,
) -> dict[str, SegMetrics]:
    """Evaluate ``checkpoint`` on its validation set and write the report to ``out_dir``.

    Returns the metrics per model (as ``evaluate_checkpoint`` would).
    """
    run = build_run(checkpoint=checkpoint, overrides=overrides)
    metrics = evaluate_run(run, models, source=str(checkpoint))
    if not is_main_process():  # under torchrun every rank scored its share; rank 0 writes
        return metrics
    out_dir = Path(out_dir)
    classes = run.bundle.classes
    step = run.checkpoint["step"] if run.checkpoint else None
    cfg_eval = to_dict(run.cfg)["eval"]
    header = (
        f"# Evaluation of `{checkpoint}`\n\n"
        f"Step {step}, dataset `{run.cfg.data.name}` ({len(run.val_set)} validation images), "
        f"evaluation mode `{cfg_eval['mode']}`. IoU in %, `-`: class neither in the ground "
        "truth nor predicted (left out of the mean)."
    )
    write_text(out_dir / "iou.md", format_markdown(metrics, classes, header))
    report = {
        "checkpoint": str(checkpoint),
        "step": step,
        "data": run.cfg.data.name,
        "num_images": len(run.val_set),
        "eval": cfg_eval,
        "classes": classes,
        "models": {
            name: {**m.as_dict(classes), "confusion": m.confusion} for name, m in metrics.items()
        },
    }
    write_json(out_dir / "iou.json", report)

    for i, (name, m) in enumerate(metrics.items()):
        path = out_dir / ("confusion.png" if i == 0 else f"confusion_{name}.png")
        title = f"{name}: confusion matrix, row-normalised (mIoU {m.miou:.2f})"
        plot_confusion(m.confusion, classes, path, title)
    available = run.method.eval_models()
    samples = _sample_rows(run, {n: available[n] for n in metrics}, num_samples)
    if samples:
        lut = label_colors(run.bundle.palette, len(classes))
        plot_samples(samples, classes, lut, out_dir / "samples.png", run.bundle.ignore_index)
    print(format_table(metrics, classes))
    print(f"\nreport: {out_dir}/ (iou.md, iou.json, confusion.png, samples.png)")
    return metrics
