"""``dualteacher predict CHECKPOINT|EXPORT INPUT... --out DIR``: see ``serving.predict``."""

from __future__ import annotations

import argparse
import sys

from dualteacher.commands._options import (
    BATCH_HELP,
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    WORKERS_HELP,
    add_checkpoint,
    add_command,
    add_models,
    is_override,
)
from dualteacher.errors import INPUT_EXIT


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "predict",
        "segment images (files, folders, globs) with a checkpoint: index, colour and overlay PNGs",
        "dualteacher predict runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt "
        "photos/ 'more/*.jpg' "
        "--out runs/pred"
        "\n  dualteacher predict best.pt big.jpg eval.mode=sliding eval.crop_size=256 --out pred",
    )
    add_checkpoint(p, "latest.pt / best.pt of a run, or a directory of `dualteacher export`")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or glob patterns; config overrides "
        "section.key=value may follow (e.g. eval.mode=sliding)",
    )
    p.add_argument("--out", required=True, help="output directory")
    add_models(p)
    p.add_argument("--batch-size", type=COUNT, help=BATCH_HELP)
    p.add_argument("--alpha", type=FRACTION, default=0.5, help="colour weight of the overlay, 0..1")
    p.add_argument(
        "--device",
        help="cpu, cuda, cuda:N (default: a checkpoint's train.device; an export: "
        "cuda if there is one (torch), cpu (onnx))",
    )
    p.add_argument("--workers", type=NON_NEGATIVE, default=0, help=WORKERS_HELP)
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx: ONNX Runtime on an exported directory with model.onnx "
        "(pip install 'dualteacher[onnx]')",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.serving.predict import format_failures, predict

    # INPUT... may mix in config overrides (section.key=value) that are not existing paths.
    overrides = [a for a in args.inputs if is_override(a)]
    inputs = [a for a in args.inputs if a not in overrides]
    result = predict(
        args.checkpoint,
        inputs,
        args.out,
        overrides=overrides,
        device=args.device,
        models=args.models,
        batch_size=args.batch_size,
        alpha=args.alpha,
        workers=args.workers,
        runtime=args.runtime,
    )
    print(f"wrote {len(result.written)} prediction(s) to {args.out}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} non-image file(s) in folders")
    if result.previous_outputs:
        print(
            f"left out {len(result.previous_outputs)} file(s) written by an earlier predict, "
            f"suggest or pseudolabel (e.g. {result.previous_outputs[0]})"
        )
    if result.failed:
        print(format_failures(result), file=sys.stderr)
        return INPUT_EXIT  # some inputs could not be read: the user's input
    return 0
