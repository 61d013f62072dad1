"""``dualteacher demo-data --out DIR``: the demo dataset written in the folder layout."""

from __future__ import annotations

import argparse

from dualteacher.commands._options import add_command, add_overrides
from dualteacher.config import load_config


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "demo-data",
        "write the demo dataset to disk in the folder layout, with the true masks of the "
        "unlabelled images in unlabeled_masks/",
        "dualteacher demo-data --out data/demo_folder data.demo.seed=1",
    )
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument("--config", default="demo", help="config whose data.demo is written (demo)")
    add_overrides(p, "config overrides key=value (data.demo.*)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.data.demo import write_demo_folder

    cfg = load_config(args.config, args.overrides).data.demo
    wrote = write_demo_folder(cfg, args.out)
    n = cfg.num_labeled, cfg.num_unlabeled, cfg.num_val
    print(
        f"{'wrote' if wrote else 'already there:'} {args.out}: {n[0]} labelled, {n[1]} unlabelled "
        f"(their masks in unlabeled_masks/), {n[2]} validation images\n"
        f"use: data.name=folder data.root={args.out}"
    )
