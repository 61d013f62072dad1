"""How closely an ONNX export predicts like PyTorch, on the checkpoint's own validation set.

Exports ``CHECKPOINT`` (safetensors + ONNX) to a temporary directory, loads the export with
each runtime (``load_exported``) and predicts every validation image of the checkpoint's
dataset the way ``dualteacher predict`` / ``eval`` do (``eval`` settings of the checkpoint).
Prints one JSON object: the export-time check, the largest absolute logit difference over all
images, the share of pixels whose class agrees, and the validation mIoU of each runtime (the
package's one mIoU). These numbers do not depend on machine load::

    python benchmarks/export_agreement.py runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt
    python benchmarks/export_agreement.py best.pt data.root=/data/VOC2012 --model teacher_a
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch


def main() -> None:
    from dualteacher.data import build_data
    from dualteacher.data.base import EvalSet
    from dualteacher.metrics import ConfusionMatrix
    from dualteacher.serving.export import export_checkpoint
    from dualteacher.serving.segmenter import load_exported

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("overrides", nargs="*", help="config overrides (e.g. data.root=...)")
    parser.add_argument("--model", default="student")
    parser.add_argument("--limit", type=int, help="first N validation images only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = export_checkpoint(
            args.checkpoint, tmp, "safetensors,onnx", args.model, args.overrides
        )
        runtimes = {r: load_exported(tmp, r, "cpu", args.overrides) for r in ("torch", "onnx")}
        cfg = runtimes["torch"].cfg
        bundle = build_data(cfg.data)
        val = EvalSet(bundle.val, cfg.data)
        k = bundle.num_classes
        cms = {r: ConfusionMatrix(k, bundle.ignore_index) for r in runtimes}
        same = total = 0
        max_diff = 0.0
        n = min(len(val), args.limit or len(val))
        for i in range(n):
            sample = val[i]
            x = sample["image"][None]  # (1, 3, H, W) normalised
            logits = {r: seg.logits(x) for r, seg in runtimes.items()}
            pred = {r: v.argmax(1) for r, v in logits.items()}
            for r in runtimes:
                cms[r].update(pred[r], sample["mask"][None])
            max_diff = max(max_diff, (logits["onnx"] - logits["torch"]).abs().max().item())
            same += (pred["onnx"] == pred["torch"]).sum().item()
            total += pred["torch"].numel()
    row = {
        "checkpoint": args.checkpoint,
        "model": cfg.model.name,
        "eval_mode": str(cfg.eval.mode),
        "images": n,
        "export_check": result.info["onnx"]["check"],
        "max_abs_logit_diff": max_diff,
        "pixel_agreement": same / total,
        "pixels": total,
        "miou_torch": cms["torch"].compute().miou,
        "miou_onnx": cms["onnx"].compute().miou,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
