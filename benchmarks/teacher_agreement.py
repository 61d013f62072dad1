"""How distinct are a Dual Teacher run's teachers from its student?

For each checkpoint: the share of validation pixels on which each teacher predicts the same
class as the student (argmax of ``eval.mode`` inference), each model's mIoU, and each teacher's
relative parameter distance ``||teacher - student|| / ||student||`` (the ``teacher_*_dist``
that training logs). A teacher that agrees on ~99 % of pixels is a copy of the student; the
point of a teacher is to be a better, slower average. One JSON line per checkpoint::

    python benchmarks/teacher_agreement.py \\
        runs/demo/dual_teacher_from_supervised_2x_seed0/latest.pt [...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dualteacher.engine.evaluate import _batches, predict_logits
from dualteacher.engine.run import build_run
from dualteacher.methods.ema import relative_distance
from dualteacher.metrics import ConfusionMatrix


@torch.no_grad()
def agreement(path: str) -> dict:
    run = build_run(checkpoint=path)
    models = run.method.eval_models()  # {"student": ..., "teacher_a": ..., ...}
    student = models["student"].eval()
    teachers = {n: m.eval() for n, m in models.items() if n != "student"}
    k = run.bundle.num_classes
    same, pixels = dict.fromkeys(teachers, 0), 0
    cms = {n: ConfusionMatrix(k, 255, device=run.device) for n in models}
    loader = DataLoader(run.val_set, batch_size=run.cfg.eval.batch_size, collate_fn=list)
    for image, mask in _batches(loader, run.device):
        ref = predict_logits(student, image, run.cfg.eval, k).argmax(1)  # (B, H, W)
        cms["student"].update(ref, mask)
        pixels += ref.numel()
        for n, t in teachers.items():
            pred = predict_logits(t, image, run.cfg.eval, k).argmax(1)
            same[n] += int((pred == ref).sum())
            cms[n].update(pred, mask)
    return {
        "checkpoint": path,
        "step": run.checkpoint["step"] if run.checkpoint else None,
        "miou": {n: round(cm.compute().miou, 2) for n, cm in cms.items()},
        "agreement_pct": {n: round(100 * same[n] / pixels, 2) for n in teachers},
        "relative_distance": {
            n: float(f"{relative_distance(t, student):.3g}") for n, t in teachers.items()
        },
        "mean_logged_distance": _logged_distance(Path(path).parent / "metrics.jsonl"),
    }


def _logged_distance(metrics: Path) -> dict:
    """Mean over the run of each ``teacher_*_dist`` that training logged (every log step)."""
    if not metrics.is_file():
        return {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    out = {}
    for key in sorted({k for r in rows for k in r if k.endswith("_dist")}):
        values = [r[key] for r in rows if key in r]
        out[key.removesuffix("_dist")] = float(f"{sum(values) / len(values):.3g}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args(argv)
    for path in args.checkpoints:
        print(json.dumps(agreement(path)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
