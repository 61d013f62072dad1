"""``dualteacher pseudolabel CHECKPOINT --images INPUT... --out DIR``: see
``serving.pseudolabel``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dualteacher.commands._options import (
    add_checkpoint,
    add_command,
    add_overrides,
    add_serving,
    add_tool_format,
    split_images,
)
from dualteacher.errors import INPUT_EXIT


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "pseudolabel",
        "write pseudo-labels of images as masks in the folder dataset's format (OUT/masks/), "
        "255 = ignore below --conf, and confidence maps (OUT/confidence/)",
        "dualteacher pseudolabel runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt "
        "--images my_data/unlabeled "
        "--out runs/pseudo --conf 0.9",
    )
    add_checkpoint(p)
    add_overrides(p, "config overrides key=value (e.g. eval.mode=...)")
    p.add_argument(
        "--images", nargs="+", required=True, metavar="INPUT", help="image files, folders, globs"
    )
    p.add_argument("--out", required=True, help="output directory (masks/, confidence/)")
    p.add_argument(
        "--conf",
        type=float,
        default=0.95,
        help="pixels whose top probability is below this are 255 = ignore (default 0.95)",
    )
    p.add_argument(
        "--model", default="student", help="student (default), teacher_a, teacher_b, teacher"
    )
    p.add_argument("--overwrite", action="store_true", help="replace masks already in OUT/masks")
    add_tool_format(p, "every pseudo-label")
    add_serving(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.serving.predict import PredictResult, format_failures
    from dualteacher.serving.pseudolabel import pseudolabel

    split_images(args)
    result = pseudolabel(
        args.checkpoint,
        args.images,
        args.out,
        conf=args.conf,
        model=args.model,
        overrides=args.overrides,
        overwrite=args.overwrite,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        fmt=args.format,
        image_prefix=args.image_prefix,
    )
    out = Path(args.out)
    print(
        f"wrote {len(result.written)} pseudo-label(s) to {out / 'masks'} "
        f"({100 * result.kept:.1f} % of the pixels at confidence >= {args.conf}, the rest 255 = "
        f"ignore); confidence maps in {out / 'confidence'}"
    )
    if result.export is not None:
        print(f"pre-annotations for {args.format}: {result.export}")
    if result.renamed:
        print(
            f"{len(result.renamed)} image(s) share a name with another but for the extension: "
            f"their masks keep it (e.g. {result.renamed[0][0]} -> {result.renamed[0][1]}); "
            f"{result.mapping} maps every image to its mask"
        )
    if result.previous:
        print(
            f"left out {len(result.previous)} file(s) written by an earlier run "
            f"(e.g. {result.previous[0]})"
        )
    if result.skipped:
        print(f"skipped {len(result.skipped)} non-image file(s) in folders")
    if result.failed:
        print(format_failures(PredictResult(failed=result.failed)), file=sys.stderr)
        return INPUT_EXIT  # some inputs could not be read: the user's input, as in predict
    return 0
