"""``dualteacher compare CONFIG --methods a,b [--steps N | --minutes M]``: see
``study.compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualteacher.commands._options import (
    COUNT,
    POSITIVE,
    add_command,
    add_config,
    add_overrides,
    add_rescan,
    with_rescan,
)
from dualteacher.config import load_config


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "compare",
        "train several methods on the same data, model, seeds and budget and tabulate them",
        "dualteacher compare demo --methods supervised,dual_teacher --steps 500 --seeds 3"
        "\n  dualteacher compare configs/demo.yaml data.demo.num_labeled=48 "
        "--methods supervised,mean_teacher,dual_teacher --minutes 5 --out runs/cmp",
    )
    add_config(p)
    add_overrides(p, "config overrides key=value, shared by all runs")
    p.add_argument(
        "--methods",
        required=True,
        help="method names separated by ','; name:Kx gives a row K times the budget; A@B starts "
        "each seed of row A from the final checkpoint of row B's run of that seed, e.g. "
        "supervised:2x,dual_teacher@supervised:2x (Dual Teacher from supervised's plateau)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=COUNT, help="steps per run (default: train.steps)")
    budget.add_argument(
        "--minutes",
        type=POSITIVE,
        help="training wall-clock per run; steps are set from a short timing probe",
    )
    p.add_argument("--seeds", type=COUNT, help="run seeds 0..K-1 (default: train.seed only)")
    p.add_argument("--out", help="output directory (default runs/compare_<config name>)")
    p.add_argument(
        "--jobs",
        type=COUNT,
        default=1,
        help="runs trained at the same time, one process each, CPUs (and GPUs) shared out "
        "(default 1; not with --minutes)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="redo the runs in --out that were planned for another budget (deletes only the "
        "files compare wrote in their folders)",
    )
    add_rescan(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.study.compare import compare

    cfg = load_config(args.config, with_rescan(args))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = list(range(args.seeds)) if args.seeds else None
    out = args.out or f"runs/compare_{Path(args.config).stem}"
    compare(
        cfg,
        methods,
        out,
        seeds,
        steps=args.steps,
        minutes=args.minutes,
        jobs=args.jobs,
        fresh=args.fresh,
    )
