"""``dualteacher bench``: time training steps on synthetic data; see ``study.bench``."""

from __future__ import annotations

import argparse
import json

from dualteacher.commands._options import COUNT, NON_NEGATIVE, add_command, add_overrides
from dualteacher.config import load_config


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "bench",
        "time training steps of a method and model on synthetic data: mean step time, peak "
        "memory, FLOPs and their share of this device's peak (MFU)",
        "dualteacher bench --model deeplabv3plus-r101 --crop 321 --batch 2 "
        "--method dual_teacher --steps 3 --json",
    )
    p.add_argument("--model", help="registered model (default: model.name of the config)")
    p.add_argument("--method", help="registered method (default: method.name of the config)")
    p.add_argument("--crop", type=COUNT, help="square crop size (default: data.crop_size)")
    p.add_argument("--batch", type=COUNT, help="labelled batch size (default: data.batch_size)")
    p.add_argument("--steps", type=COUNT, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=1, help="untimed steps first (default 1)")
    p.add_argument("--classes", type=COUNT, default=21, help="number of classes (default 21)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=COUNT, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--tf32",
        choices=("on", "off"),
        help="CUDA: TF32 for float32 matrix products and cuDNN convolutions (default: torch's "
        "settings, TF32 for convolutions only)",
    )
    p.add_argument("--config", help="YAML config to start from (default: built-in defaults)")
    p.add_argument(
        "--data",
        action="store_true",
        help="read the config's dataset through the training loaders (default: random tensors)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_overrides(p, "config overrides key=value (e.g. optim.name=adamw)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.study.bench import bench, format_bench

    overrides = list(args.overrides)
    for key, value in (
        ("model.name", args.model),
        ("method.name", args.method),
        ("data.crop_size", args.crop),
        ("data.batch_size", args.batch),
        ("train.device", args.device),
        ("train.threads", args.threads),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    result = bench(
        cfg,
        steps=args.steps,
        warmup=args.warmup,
        num_classes=args.classes,
        real_data=args.data,
        tf32=None if args.tf32 is None else args.tf32 == "on",
    )
    print(json.dumps(result) if args.json else format_bench(result))
