"""``dualteacher demo``: see ``study.demo``."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import COUNT, add_command, add_overrides


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "demo",
        "train supervised and dual_teacher on the built-in demo data and compare them",
        "dualteacher demo --out runs/demo",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--jobs", type=COUNT, help="runs trained at the same time (default 2 with 2+ CPUs)"
    )
    add_overrides(p, "config overrides key=value (e.g. train.steps=200)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.study.demo import run_demo

    run_demo(args.out, args.overrides, jobs=args.jobs)
