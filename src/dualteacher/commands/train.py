"""``dualteacher train CONFIG [key=value ...] [--out DIR]``."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import (
    add_command,
    add_config,
    add_overrides,
    add_rescan,
    with_rescan,
)
from dualteacher.config import load_config
from dualteacher.outputs import writing_under


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "train",
        "train a method from a YAML config, resuming if the run directory has latest.pt",
        "dualteacher train configs/demo.yaml method.name=mean_teacher train.steps=500",
    )
    add_config(p)
    add_overrides(p)
    p.add_argument(
        "--out",
        help="run directory (default: train.out_dir, or runs/<data>_<method> where <data> is "
        "the data.root folder's name or data.name)",
    )
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="start from this checkpoint's weights (student and teachers) with a fresh schedule "
        "in a new run directory, e.g. after new labels arrived (train.init_from=CKPT)",
    )
    add_rescan(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.engine.trainer import default_out_dir
    from dualteacher.study.train import train

    overrides = with_rescan(args)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = default_out_dir(cfg)
    with writing_under(cfg.train.out_dir):  # a run folder may be someone else's (resume)
        train(cfg)
