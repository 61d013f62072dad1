"""``dualteacher check CONFIG``: every file of a dataset config read; see ``study.check``."""

from __future__ import annotations

import argparse
import sys

from dualteacher.commands._options import (
    COUNT,
    NON_NEGATIVE,
    add_command,
    add_config,
    add_overrides,
    add_rescan,
    with_rescan,
)
from dualteacher.config import load_config
from dualteacher.errors import INPUT_EXIT


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "check",
        "read every image and mask of a dataset config; report counts, class frequencies and "
        "every bad file (exit status 2 when there is any)",
        "dualteacher check configs/voc_classic_r101_321.yaml data.root=data/VOC2012",
    )
    add_config(p)
    add_overrides(p, "config overrides key=value (e.g. data.root=...)")
    p.add_argument("--workers", type=COUNT, default=None, help="reading threads (default: CPUs)")
    p.add_argument(
        "--sample",
        type=COUNT,
        metavar="N",
        help="read only N samples of each larger set, drawn at random (every entry is still "
        "counted); for very large sets",
    )
    p.add_argument(
        "--seed", type=NON_NEGATIVE, default=0, help="seed of --sample's draw (default 0)"
    )
    add_rescan(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.study.check import check_data, format_report

    cfg = load_config(args.config, with_rescan(args))
    report = check_data(
        cfg,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        sample=args.sample,
        seed=args.seed,
    )
    print(format_report(report))
    if not report.ok:
        sys.exit(INPUT_EXIT)  # bad data files are the user's input, as in every other command
