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
  dualteacher models                                 registered models and their sizes
  dualteacher bench --model segformer-b1 --crop 512 --batch 2 --method dual_teacher
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


def _cmd_models(args: argparse.Namespace) -> None:
    import json

    from dualteacher.errors import ConfigError
    from dualteacher.models import MODELS, list_models

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}. Available: {', '.join(MODELS)}")
    rows = list_models(args.classes, names=args.names or None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<20} {'params (M)':>10}  {'pad to':>6}  description")
    for r in rows:
        print(f"{r['name']:<20} {r['params_m']:>10.1f}  {r['size_divisor']:>6}  {r['description']}")
    print(f"(parameters for {args.classes} classes; inputs are padded to multiples of 'pad to')")


def _cmd_bench(args: argparse.Namespace) -> None:
    import json

    from dualteacher.bench import bench, format_bench
    from dualteacher.config import load_config

    overrides = list(args.overrides)
    for key, value in (
        ("model.name", args.model),
        ("method.name", args.method),
        ("data.crop_size", args.crop),
        ("data.batch_size", args.batch),
        ("train.device", args.device),
        ("train.threads", args.threads),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    result = bench(cfg, steps=args.steps, warmup=args.warmup, num_classes=args.classes)
    print(json.dumps(result) if args.json else format_bench(result))


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
        "models",
        "list the registered models with their parameter counts",
        "dualteacher models segformer-b1 dpt-dinov2-s --classes 150",
    )
    p.add_argument("names", nargs="*", help="models to list (default: all)")
    p.add_argument("--classes", type=int, default=21, help="number of classes (default 21)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=_cmd_models)

    p = add(
        "bench",
        "time training steps of a method and model on synthetic data: mean step time and "
        "peak memory on this device",
        "dualteacher bench --model deeplabv3plus-r101 --crop 321 --batch 2 "
        "--method dual_teacher --steps 3 --json",
    )
    p.add_argument("--model", help="registered model (default: model.name of the config)")
    p.add_argument("--method", help="registered method (default: method.name of the config)")
    p.add_argument("--crop", type=int, help="square crop size (default: data.crop_size)")
    p.add_argument("--batch", type=int, help="labelled batch size (default: data.batch_size)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--classes", type=int, default=21, help="number of classes (default 21)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--config", help="YAML config to start from (default: built-in defaults)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value (e.g. optim.name=adamw)"
    )
    p.set_defaults(func=_cmd_bench)
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
