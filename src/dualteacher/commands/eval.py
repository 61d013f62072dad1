"""``dualteacher eval CHECKPOINT [key=value ...] [--models M] [--report DIR]``."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import (
    NON_NEGATIVE,
    add_checkpoint,
    add_command,
    add_models,
    add_overrides,
)


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "eval",
        "evaluate a checkpoint on its validation set: mIoU and per-class IoU",
        "dualteacher eval runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt --models all "
        "eval.mode=sliding",
    )
    add_checkpoint(p)
    add_overrides(p, "config overrides key=value (e.g. data.root=...)")
    add_models(p)
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write a report to DIR: iou.md, iou.json, confusion.png, samples.png",
    )
    p.add_argument(
        "--samples",
        type=NON_NEGATIVE,
        default=8,
        help="validation images in samples.png (default 8)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.checkpoint import load_checkpoint
    from dualteacher.engine.distributed import is_main_process
    from dualteacher.engine.evaluate import evaluate_checkpoint, format_table
    from dualteacher.study.report import write_report

    if args.report:
        write_report(args.checkpoint, args.report, args.overrides, args.models, args.samples)
        return
    results = evaluate_checkpoint(args.checkpoint, args.overrides, models=args.models)
    if is_main_process():  # under torchrun every rank holds the same, all-reduced numbers
        classes = load_checkpoint(args.checkpoint)["classes"]
        print(format_table(results, classes))
