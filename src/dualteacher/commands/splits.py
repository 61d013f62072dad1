"""``dualteacher splits``: reproducible labelled / unlabelled split files, or ``--list`` of the
shipped ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualteacher.commands._options import COUNT, FRACTION, add_command
from dualteacher.config import DataConfig
from dualteacher.errors import ConfigError
from dualteacher.outputs import writing_under


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "splits",
        "write reproducible labelled / unlabelled split files (labeled.txt, unlabeled.txt), or "
        "list the papers' splits shipped with the package (--list; use them as data.split=NAME)",
        "dualteacher splits --root data/VOC2012 --dataset voc --labeled 366 --seed 0 "
        "--out splits/voc/366\n  dualteacher splits --list",
    )
    p.add_argument(
        "--list", action="store_true", help="list the shipped splits (data.split=NAME) and exit"
    )
    p.add_argument("--root", help="dataset root (as data.root)")
    p.add_argument("--dataset", help="voc | cityscapes | ade20k | folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labeled", type=COUNT, help="number of labelled images")
    group.add_argument("--fraction", type=FRACTION, help="fraction of the candidates to label")
    p.add_argument(
        "--blended",
        action="store_true",
        help="voc: draw from all 10,582 augmented images (default: the classic 1,464)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # Here, not at the top: these load torch (seconds); `dualteacher --help` and the light
    # commands stay fast.
    from dualteacher.data import SPLIT_POOLS
    from dualteacher.data.splits import draw_split, write_split
    from dualteacher.data.standard_splits import listing

    if args.list:
        print(listing())
        return
    missing = [o for o, v in (("--root", args.root), ("--dataset", args.dataset),
               ("--out", args.out)) if v is None]  # fmt: skip
    if args.labeled is None and args.fraction is None:
        missing.append("--labeled or --fraction")
    if missing:
        raise ConfigError(
            f"splits: give {', '.join(missing)} (or --list to see the shipped splits)"
        )
    if args.dataset not in SPLIT_POOLS:
        raise ConfigError(f"--dataset {args.dataset}: choose one of {', '.join(SPLIT_POOLS)}")
    if args.blended and args.dataset != "voc":
        raise ConfigError("--blended applies to --dataset voc only")
    cfg = DataConfig(name=args.dataset, root=args.root)
    candidates, rest = SPLIT_POOLS[args.dataset](cfg, args.blended)
    labeled, unlabeled = draw_split(candidates, args.labeled, args.fraction, args.seed)
    out = Path(args.out)
    root = Path(args.root).expanduser()
    with writing_under(out):
        write_split(out / "labeled.txt", labeled, root, with_masks=True)
        unl = sorted(unlabeled + rest, key=lambda e: e.name)
        write_split(out / "unlabeled.txt", unl, root, False)
    print(
        f"wrote {out / 'labeled.txt'} ({len(labeled)} of {len(candidates)} candidates) and "
        f"{out / 'unlabeled.txt'} ({len(unlabeled) + len(rest)}); paths relative to {root}\n"
        f"use: data.name={args.dataset} data.root={args.root} "
        f"data.labeled={out / 'labeled.txt'} data.unlabeled={out / 'unlabeled.txt'}"
    )
