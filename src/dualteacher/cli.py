"""Command-line interface: ``dualteacher <command> ...`` (also ``python -m dualteacher``)."""

from __future__ import annotations

import argparse
import sys
import traceback

from dualteacher import __version__

EPILOG = """examples:
  dualteacher demo                                   supervised vs. dual_teacher on demo data
  dualteacher train configs/demo.yaml train.steps=200
  dualteacher eval runs/demo_dual_teacher/best.pt --models all
  dualteacher check configs/demo.yaml data.name=folder data.root=my_data
"""


def _cmd_train(args: argparse.Namespace) -> None:
    from dualteacher.config import load_config
    from dualteacher.engine.trainer import default_out_dir, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = default_out_dir(cfg)
    train(cfg)


def _cmd_eval(args: argparse.Namespace) -> None:
    from dualteacher.engine.checkpoint import load_checkpoint
    from dualteacher.engine.evaluate import evaluate_checkpoint, format_table

    results = evaluate_checkpoint(args.checkpoint, args.overrides, models=args.models)
    classes = load_checkpoint(args.checkpoint)["classes"]
    print(format_table(results, classes))


def _cmd_demo(args: argparse.Namespace) -> None:
    from dualteacher.demo import run_demo

    run_demo(args.out, args.overrides)


def _cmd_check(args: argparse.Namespace) -> None:
    from dualteacher.config import load_config
    from dualteacher.data.check import check_data, format_report

    cfg = load_config(args.config, args.overrides)
    report = check_data(cfg, workers=args.workers, progress=sys.stderr.isatty())
    print(format_report(report))
    if not report.ok:
        sys.exit(1)


def _cmd_splits(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dualteacher.config import DataConfig
    from dualteacher.data import SPLIT_POOLS
    from dualteacher.data.splits import draw_split, write_split
    from dualteacher.errors import ConfigError

    if args.dataset not in SPLIT_POOLS:
        raise ConfigError(f"--dataset {args.dataset}: choose one of {', '.join(SPLIT_POOLS)}")
    if args.blended and args.dataset != "voc":
        raise ConfigError("--blended applies to --dataset voc only")
    cfg = DataConfig(name=args.dataset, root=args.root)
    candidates, rest = SPLIT_POOLS[args.dataset](cfg, args.blended)
    labeled, unlabeled = draw_split(candidates, args.labeled, args.fraction, args.seed)
    out = Path(args.out)
    root = Path(args.root).expanduser()
    write_split(out / "labeled.txt", labeled, root, with_masks=True)
    write_split(out / "unlabeled.txt", sorted(unlabeled + rest, key=lambda e: e.name), root, False)
    print(
        f"wrote {out / 'labeled.txt'} ({len(labeled)} of {len(candidates)} candidates) and "
        f"{out / 'unlabeled.txt'} ({len(unlabeled) + len(rest)}); paths relative to {root}\n"
        f"use: data.name={args.dataset} data.root={args.root} "
        f"data.labeled={out / 'labeled.txt'} data.unlabeled={out / 'unlabeled.txt'}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualteacher",
        description="Semi-supervised semantic segmentation with Dual Teacher and its baselines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dualteacher {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
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

    p = add(
        "train",
        "train a method from a YAML config, resuming if the run directory has latest.pt",
        "dualteacher train configs/demo.yaml method.name=mean_teacher train.steps=500",
    )
    p.add_argument("config", help="YAML config file, or the name of a built-in config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.add_argument("--out", help="run directory (default: train.out_dir or runs/<data>_<method>)")
    p.set_defaults(func=_cmd_train)

    p = add(
        "eval",
        "evaluate a checkpoint on its validation set: mIoU and per-class IoU",
        "dualteacher eval runs/demo/dual_teacher/best.pt --models all eval.mode=sliding",
    )
    p.add_argument("checkpoint", help="latest.pt / best.pt of a run")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.root=...)")
    p.add_argument(
        "--models", default="student", help="student (default), all, or names separated by ','"
    )
    p.set_defaults(func=_cmd_eval)

    p = add(
        "demo",
        "train supervised and dual_teacher on the built-in demo data and compare them",
        "dualteacher demo --out runs/demo",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. train.steps=200)")
    p.set_defaults(func=_cmd_demo)

    p = add(
        "check",
        "read every image and mask of a dataset config; report counts, class frequencies and "
        "every bad file (exit status 1 when there is any)",
        "dualteacher check configs/voc_classic_r101_321.yaml data.root=data/VOC2012",
    )
    p.add_argument("config", help="YAML config file, or the name of a built-in config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.root=...)")
    p.add_argument("--workers", type=int, default=None, help="reading threads (default: CPUs)")
    p.set_defaults(func=_cmd_check)

    p = add(
        "splits",
        "write reproducible labelled / unlabelled split files (labeled.txt, unlabeled.txt)",
        "dualteacher splits --root data/VOC2012 --dataset voc --labeled 366 --seed 0 "
        "--out splits/voc/366",
    )
    p.add_argument("--root", required=True, help="dataset root (as data.root)")
    p.add_argument("--dataset", required=True, help="voc | cityscapes | ade20k | folder")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--labeled", type=int, help="number of labelled images")
    group.add_argument("--fraction", type=float, help="fraction of the candidates to label")
    p.add_argument(
        "--blended",
        action="store_true",
        help="voc: draw from all 10,582 augmented images (default: the classic 1,464)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_splits)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from dualteacher.errors import DualTeacherError

    try:
        args.func(args)
    except DualTeacherError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
