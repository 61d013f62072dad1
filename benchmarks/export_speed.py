"""Images per second of ``dualteacher predict``'s inference with PyTorch and with ONNX Runtime.

For each model: build it (random weights: speed does not depend on them), export it with
``dualteacher.serving.export.export_model`` (safetensors + ONNX), load the export once per
runtime with ``load_exported`` and time the same per-image path ``dualteacher predict`` runs
(normalise, forward by ``eval.mode``, argmax, copy to NumPy) on random ``--size`` x ``--size``
RGB images, batch 1, after ``--warmup`` untimed images. Image decoding and PNG writing are left
out: they are the same for both runtimes. One JSON line per model::

    python benchmarks/export_speed.py --threads 2                       # the README numbers
    python benchmarks/export_speed.py --size 64 --images 2 --warmup 1   # does it run?
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def measure(name: str, size: int, images: int, warmup: int, threads: int | None, classes: int):
    from dualteacher.config import load_config
    from dualteacher.models import build_model
    from dualteacher.serving.export import export_model
    from dualteacher.serving.segmenter import load_exported

    # train.threads is what load_exported gives torch and ONNX Runtime (null: their defaults)
    overrides = [
        f"model.name={name}",
        "model.pretrained=null",
        f"train.threads={threads or 'null'}",
    ]
    cfg = load_config("demo", overrides)  # the demo's normalisation, eval.mode=whole
    torch.manual_seed(0)
    net = build_model(cfg.model, classes, verbose=False)
    names = [f"class{i}" for i in range(classes)]
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(images)]
    row = {"model": name, "size": size, "images": images, "threads": threads or "default"}
    preds = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(net, cfg, names, [], tmp, "safetensors,onnx")
        row["export_seconds"] = round(time.perf_counter() - t0, 2)
        for runtime in ("torch", "onnx"):
            seg = load_exported(tmp, runtime=runtime, device="cpu")
            for image in batch[: min(warmup, images)]:
                seg.predict(image)
            t0 = time.perf_counter()
            preds[runtime] = [seg.predict(image) for image in batch]
            seconds = time.perf_counter() - t0
            row[f"{runtime}_images_per_s"] = round(images / seconds, 3)
    row["onnx_vs_torch"] = round(row["onnx_images_per_s"] / row["torch_images_per_s"], 3)
    agree = np.mean([np.mean(a == b) for a, b in zip(preds["torch"], preds["onnx"])])
    row["argmax_agreement"] = float(agree)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet-effl0,segformer-b0")
    parser.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    parser.add_argument("--images", type=int, default=20, help="timed images (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed images first")
    parser.add_argument(
        "--threads", type=int, help="CPU threads of both runtimes (default: theirs)"
    )
    parser.add_argument("--classes", type=int, default=21, help="number of classes (default 21)")
    args = parser.parse_args()
    for name in args.models.split(","):
        row = measure(name, args.size, args.images, args.warmup, args.threads, args.classes)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
