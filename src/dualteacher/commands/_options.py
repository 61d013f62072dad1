"""Options that several commands share, declared once, and the argparse helpers they use."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def _number(kind: type, rule: str):
    """An argparse ``type`` for numbers in a range (a bad value is a usage error, status 2):
    ``count`` >= 1, ``non_negative`` >= 0, ``fraction`` in [0, 1], ``positive`` > 0 finite."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = {
            "count": lambda v: v >= 1,
            "non_negative": lambda v: v >= 0,
            "fraction": lambda v: 0 <= v <= 1,
            "positive": lambda v: v > 0 and v != float("inf"),
        }[rule](value)
        if not ok:
            must = {
                "count": "at least 1",
                "non_negative": "at least 0",
                "fraction": "between 0 and 1",
                "positive": "a finite number greater than 0",
            }[rule]
            raise argparse.ArgumentTypeError(f"{text} must be {must}")
        return value

    parse.__name__ = f"{rule} {kind.__name__}"
    return parse


COUNT, NON_NEGATIVE = _number(int, "count"), _number(int, "non_negative")
FRACTION, POSITIVE = _number(float, "fraction"), _number(float, "positive")

RESCAN_HELP = "scan the data folders again, ignoring a cached scan (data.rescan=true)"
CONFIG_HELP = "YAML config file, or the name of a built-in config"
CHECKPOINT_HELP = "latest.pt / best.pt of a run"
DEVICE_HELP = "cpu, cuda, cuda:N (default: the checkpoint's train.device)"
BATCH_HELP = "images per forward (default eval.batch_size)"
WORKERS_HELP = "image-reading worker processes"
MODELS_HELP = "student (default), all, or names separated by ','"
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # section.key=value


def add_command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A sub-parser with the shared layout: description, an example, ``--debug``."""
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    return p


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help=CONFIG_HELP)


def add_checkpoint(p: argparse.ArgumentParser, help: str = CHECKPOINT_HELP) -> None:
    p.add_argument("checkpoint", help=help)


def add_overrides(p: argparse.ArgumentParser, help: str = "config overrides key=value") -> None:
    p.add_argument("overrides", nargs="*", help=help)


def add_rescan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rescan", action="store_true", help=RESCAN_HELP)


def add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="student", help=MODELS_HELP)


def add_serving(p: argparse.ArgumentParser, number: type = int, device: str = DEVICE_HELP) -> None:
    """``--device``, ``--batch-size`` and ``--workers`` of the commands that run a model on
    images (``number``: the type of the two counts)."""
    p.add_argument("--device", help=device)
    p.add_argument("--batch-size", type=number, help=BATCH_HELP)
    p.add_argument("--workers", type=number, default=0, help=WORKERS_HELP)


# the annotation tools' import formats (serving.tool_export.FORMATS; here too so that --help
# does not import the serving code)
TOOL_FORMATS = ("coco", "cvat", "labelstudio")


def add_tool_format(p: argparse.ArgumentParser, what: str) -> None:
    """``--format`` and ``--image-prefix`` of the commands that write pre-annotations."""
    p.add_argument(
        "--format",
        choices=TOOL_FORMATS,
        help=f"also write {what} as pre-annotations in an annotation tool's import format: "
        "OUT/coco.json (COCO RLE), OUT/cvat.zip (CVAT Segmentation mask 1.1), "
        "OUT/labelstudio.json (Label Studio tasks with scored predictions)",
    )
    p.add_argument(
        "--image-prefix",
        default="",
        metavar="PREFIX",
        help="put before each image's relative name in the export (e.g. Label Studio's "
        "/data/local-files/?d=photos/); default none",
    )


# options that name an output folder, on every command that has them (``upgrade-checkpoint``'s
# --out is a file: it sets ``out_is_file``)
OUT_FOLDER_OPTIONS = {"out": "--out", "report": "--report"}


def check_out_folders(args: argparse.Namespace) -> None:
    """One check of the output folders for every verb, before the command runs: an existing
    file, or a path below a file, is a one-line error (``outputs.check_out_folder``)."""
    # Here, not at the top: outputs loads PIL; `dualteacher --help` stays fast.
    from dualteacher.outputs import check_out_folder

    for dest, flag in OUT_FOLDER_OPTIONS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str | Path) and not (
            dest == "out" and getattr(args, "out_is_file", False)
        ):
            check_out_folder(value, flag)


def with_rescan(args: argparse.Namespace) -> list[str]:
    """The overrides, with ``data.rescan=true`` for ``--rescan``."""
    return [*args.overrides, *(["data.rescan=true"] * args.rescan)]


def is_override(text: str) -> bool:
    """``section.key=value`` that is no existing path: a config override among inputs."""
    return bool(OVERRIDE.match(text)) and not Path(text).exists()


def split_images(args: argparse.Namespace) -> None:
    """``--images A B key=value``: the option swallows overrides given after it; hand tokens
    that look like overrides (and are no existing path) back to ``args.overrides``."""
    images = args.images or []
    moved = [a for a in images if is_override(a)]
    args.images = [a for a in images if a not in moved] if args.images is not None else None
    args.overrides = [*moved, *args.overrides]
