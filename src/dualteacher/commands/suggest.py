"""``dualteacher suggest CHECKPOINT --top K --out DIR``: see ``serving.suggest``."""

from __future__ import annotations

import argparse
import sys

from dualteacher.commands._options import (
    add_checkpoint,
    add_command,
    add_overrides,
    add_serving,
    add_tool_format,
    split_images,
)
from dualteacher.errors import INPUT_EXIT, ConfigError


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "suggest",
        "rank unlabelled images by what labelling them is likely to teach (teacher "
        "disagreement, student uncertainty, class rarity): ranking.csv, top.txt, "
        "contact_sheet.png, suggest.json",
        "dualteacher suggest runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt "
        "--top 20 --out runs/next"
        "\n  dualteacher suggest best.pt data.root=my_data --top 50 --out runs/next"
        "\n  dualteacher suggest best.pt --images new_photos/ --top 10 --out runs/next",
    )
    p.epilog = (
        "scores (means over each image's pixels):\n"
        "  disagreement  share of pixels where the two models' classes differ\n"
        "  sym_kl        (KL(p_a||p_b) + KL(p_b||p_a)) / 2 of their softmax\n"
        "  uncertainty   1 - the student's top softmax probability\n"
        "  rarity        r(c) of the student's class c, r(c) = log(f_max/f_c) / "
        "log(f_max/f_min),\n"
        "                f = class pixel frequencies of the labelled set\n"
        "  combined = (w_d R(sym_kl) + w_u R(uncertainty) + w_r R(rarity)) / (w_d + w_u + w_r)\n"
        "  R = percentile rank among the scored images (0 lowest, 1 highest); ties by name.\n"
        "  The two models: teacher_a and teacher_b (dual_teacher); student and teacher\n"
        "  (mean_teacher); a single model (supervised, fixmatch, unimatch) leaves sym_kl out.\n\n"
        + p.epilog
    )
    add_checkpoint(p)
    add_overrides(p, "config overrides key=value (e.g. data.root=my_data)")
    p.add_argument(
        "--images",
        nargs="+",
        metavar="INPUT",
        help="image files, folders or globs to rank (default: the unlabelled set of the "
        "checkpoint's config)",
    )
    p.add_argument("--top", type=int, default=20, help="images to suggest (default 20)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--weights", default="1,1,1", help="w_d,w_u,w_r of the combined score (default 1,1,1)"
    )
    add_tool_format(p, "the top --top images with the student's masks and scores")
    add_serving(p)
    p.set_defaults(func=run)


def _weights(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--weights {text}: give three numbers w_d,w_u,w_r separated by ',', e.g. 1,1,1"
        ) from None


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.serving.predict import PredictResult, format_failures
    from dualteacher.serving.suggest import format_summary, suggest

    split_images(args)
    result = suggest(
        args.checkpoint,
        args.out,
        top=args.top,
        images=args.images,
        overrides=args.overrides,
        weights=_weights(args.weights),
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        fmt=args.format,
        image_prefix=args.image_prefix,
    )
    print(format_summary(result))
    if result.failed:
        print(format_failures(PredictResult(failed=result.failed)), file=sys.stderr)
        return INPUT_EXIT  # some inputs could not be read: the user's input, as in predict
    return 0
