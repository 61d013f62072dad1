"""``dualteacher export CHECKPOINT --out DIR [--format ...]``: see ``serving.export``."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import add_checkpoint, add_command, add_overrides


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "export",
        "write one model of a checkpoint for deployment: model.safetensors (weights), "
        "model.json (architecture, classes, normalisation, metrics, config), a README.md model "
        "card and, with --format onnx, model.onnx (dynamic batch and size)",
        "dualteacher export runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt "
        "--out exported/demo "
        "--format safetensors,onnx\n  dualteacher predict exported/demo photos/ --out pred "
        "--runtime onnx",
    )
    add_checkpoint(p)
    add_overrides(
        p,
        "config overrides key=value stored as the inference settings (e.g. eval.mode=sliding)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        default="safetensors",
        help="safetensors (default), onnx, or both: safetensors,onnx",
    )
    p.add_argument(
        "--model", default="student", help="student (default) or a teacher: teacher_a, ..."
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that holds other files (model.*, README.md and model.json "
        "there are replaced; nothing else is touched)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.serving.export import export_checkpoint, format_export

    result = export_checkpoint(
        args.checkpoint,
        args.out,
        args.format,
        model=args.model,
        overrides=args.overrides,
        force=args.force,
    )
    print(format_export(result))
