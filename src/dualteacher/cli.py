"""Command-line interface: ``dualteacher <command> ...`` (also ``python -m dualteacher``)."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from pathlib import Path

from dualteacher import __version__
from dualteacher.errors import INPUT_EXIT
from dualteacher.outputs import writing_under

EPILOG = """examples:
  dualteacher demo                                   supervised vs. dual_teacher on demo data
  dualteacher train configs/demo.yaml train.steps=200
  dualteacher eval runs/demo/dual_teacher_seed0/best.pt --models all      (written by demo)
  dualteacher check configs/demo.yaml data.name=folder data.root=my_data
  dualteacher eval runs/demo/dual_teacher_seed0/best.pt --report runs/report
  dualteacher predict runs/demo/dual_teacher_seed0/best.pt photos/ --out runs/pred
  dualteacher export runs/demo/dual_teacher_seed0/best.pt --out exported --format safetensors,onnx
  dualteacher predict exported photos/ --out runs/pred --runtime onnx
  dualteacher compare demo --methods supervised,mean_teacher,dual_teacher --seeds 3
  dualteacher suggest runs/demo/dual_teacher_seed0/best.pt --top 20 --out runs/next
  dualteacher pseudolabel best.pt --images my_data/unlabeled --out runs/pseudo --conf 0.9
  dualteacher configs                                list the built-in configs
  dualteacher upgrade-checkpoint old.pt --trust      convert your checkpoint of an older version
  dualteacher models                                 registered models and their sizes
  dualteacher bench --model segformer-b1 --crop 512 --batch 2 --method dual_teacher
"""


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


def _cmd_train(args: argparse.Namespace) -> None:
    from dualteacher.config import load_config
    from dualteacher.engine.trainer import default_out_dir, train

    overrides = [*args.overrides, *(["data.rescan=true"] * args.rescan)]
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    if cfg.train.out_dir is None:
        cfg.train.out_dir = default_out_dir(cfg)
    with writing_under(cfg.train.out_dir):  # a run folder may be someone else's (resume)
        train(cfg)


def _cmd_eval(args: argparse.Namespace) -> None:
    from dualteacher.engine.checkpoint import load_checkpoint
    from dualteacher.engine.distributed import is_main_process
    from dualteacher.engine.evaluate import evaluate_checkpoint, format_table

    if args.report:
        from dualteacher.report import write_report

        write_report(args.checkpoint, args.report, args.overrides, args.models, args.samples)
        return
    results = evaluate_checkpoint(args.checkpoint, args.overrides, models=args.models)
    if is_main_process():  # under torchrun every rank holds the same, all-reduced numbers
        classes = load_checkpoint(args.checkpoint)["classes"]
        print(format_table(results, classes))


def _cmd_upgrade_checkpoint(args: argparse.Namespace) -> None:
    from dualteacher.engine.checkpoint import load_checkpoint, trust_upgrade
    from dualteacher.errors import CheckpointError

    if not args.trust:
        try:
            load_checkpoint(args.checkpoint)  # safe: refuses a file that needs unpickling code
        except CheckpointError as e:
            raise CheckpointError(
                f"{e} (this command converts it only with --trust, which runs the file's "
                "code: give it only for a file you made yourself)"
            ) from None
        print(f"{args.checkpoint} already loads safely; nothing to do")
        return
    written = trust_upgrade(args.checkpoint, args.out)
    load_checkpoint(written)  # the converted file must now pass the safe loader
    print(f"wrote {written}: loads with weights_only=True")


def _cmd_demo(args: argparse.Namespace) -> None:
    from dualteacher.demo import run_demo

    run_demo(args.out, args.overrides, jobs=args.jobs)


def _cmd_check(args: argparse.Namespace) -> None:
    from dualteacher.config import load_config
    from dualteacher.data.check import check_data, format_report

    cfg = load_config(args.config, [*args.overrides, *(["data.rescan=true"] * args.rescan)])
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


def _cmd_splits(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dualteacher.config import DataConfig
    from dualteacher.data import SPLIT_POOLS
    from dualteacher.data.splits import draw_split, write_split
    from dualteacher.data.standard_splits import listing
    from dualteacher.errors import ConfigError

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


RESCAN_HELP = "scan the data folders again, ignoring a cached scan (data.rescan=true)"
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def _cmd_predict(args: argparse.Namespace) -> int:
    from dualteacher.predict import format_failures, predict

    # INPUT... may mix in config overrides (section.key=value) that are not existing paths.
    overrides = [a for a in args.inputs if _OVERRIDE.match(a) and not Path(a).exists()]
    inputs = [a for a in args.inputs if a not in overrides]
    result = predict(
        args.checkpoint,
        inputs,
        args.out,
        overrides=overrides,
        device=args.device,
        models=args.models,
        batch_size=args.batch_size,
        alpha=args.alpha,
        workers=args.workers,
        runtime=args.runtime,
    )
    print(f"wrote {len(result.written)} prediction(s) to {args.out}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} non-image file(s) in folders")
    if result.previous_outputs:
        print(
            f"left out {len(result.previous_outputs)} file(s) written by an earlier predict "
            f"(e.g. {result.previous_outputs[0]})"
        )
    if result.failed:
        print(format_failures(result), file=sys.stderr)
        return INPUT_EXIT  # some inputs could not be read: the user's input
    return 0


def _split_images(args: argparse.Namespace) -> None:
    """``--images A B key=value``: the option swallows overrides given after it; hand tokens
    that look like overrides (and are no existing path) back to ``args.overrides``."""
    images = args.images or []
    moved = [a for a in images if _OVERRIDE.match(a) and not Path(a).exists()]
    args.images = [a for a in images if a not in moved] if args.images is not None else None
    args.overrides = [*moved, *args.overrides]


def _weights(text: str) -> list[float]:
    from dualteacher.errors import ConfigError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--weights {text}: give three numbers w_d,w_u,w_r separated by ',', e.g. 1,1,1"
        ) from None


def _cmd_suggest(args: argparse.Namespace) -> int:
    from dualteacher.label_next import format_summary, suggest
    from dualteacher.predict import PredictResult, format_failures

    _split_images(args)
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
    )
    print(format_summary(result))
    if result.failed:
        print(format_failures(PredictResult(failed=result.failed)), file=sys.stderr)
        return 1
    return 0


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    from dualteacher.predict import PredictResult, format_failures
    from dualteacher.pseudolabels import pseudolabel

    _split_images(args)
    result = pseudolabel(
        args.checkpoint,
        args.images,
        args.out,
        conf=args.conf,
        model=args.model,
        overrides=args.overrides,
        overwrite=args.overwrite,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    out = Path(args.out)
    print(
        f"wrote {len(result.written)} pseudo-label(s) to {out / 'masks'} "
        f"({100 * result.kept:.1f} % of the pixels at confidence >= {args.conf}, the rest 255 = "
        f"ignore); confidence maps in {out / 'confidence'}"
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} non-image file(s) in folders")
    if result.failed:
        print(format_failures(PredictResult(failed=result.failed)), file=sys.stderr)
        return 1
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> None:
    from dualteacher.config import load_config
    from dualteacher.data.demo import write_demo_folder

    cfg = load_config(args.config, args.overrides).data.demo
    wrote = write_demo_folder(cfg, args.out)
    n = cfg.num_labeled, cfg.num_unlabeled, cfg.num_val
    print(
        f"{'wrote' if wrote else 'already there:'} {args.out}: {n[0]} labelled, {n[1]} unlabelled "
        f"(their masks in unlabeled_masks/), {n[2]} validation images\n"
        f"use: data.name=folder data.root={args.out}"
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from dualteacher.export import export_checkpoint, format_export

    result = export_checkpoint(
        args.checkpoint, args.out, args.format, model=args.model, overrides=args.overrides
    )
    print(format_export(result))


def _cmd_compare(args: argparse.Namespace) -> None:
    from dualteacher.compare import compare
    from dualteacher.config import load_config

    cfg = load_config(args.config, [*args.overrides, *(["data.rescan=true"] * args.rescan)])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = list(range(args.seeds)) if args.seeds else None
    out = args.out or f"runs/compare_{Path(args.config).stem}"
    compare(cfg, methods, out, seeds, steps=args.steps, minutes=args.minutes, jobs=args.jobs)


def _cmd_configs(args: argparse.Namespace) -> None:
    from dualteacher.config import builtin_config_dir

    paths = sorted(builtin_config_dir().glob("*.yaml"))
    width = max((len(p.stem) for p in paths), default=0) + 2  # names never run into the text
    for path in paths:
        first = next(
            (ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")),
            "",
        )
        print(f"{path.stem:<{width}}{first}")
    print(f"\n(in {builtin_config_dir()}; use a name or a path: dualteacher train demo)")


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
    result = bench(
        cfg, steps=args.steps, warmup=args.warmup, num_classes=args.classes, real_data=args.data
    )
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
    p.add_argument(
        "--out",
        help="run directory (default: train.out_dir, or runs/<data>_<method> where <data> is "
        "the data.root folder's name or data.name)",
    )
    p.add_argument("--rescan", action="store_true", help=RESCAN_HELP)
    p.set_defaults(func=_cmd_train)

    p = add(
        "eval",
        "evaluate a checkpoint on its validation set: mIoU and per-class IoU",
        "dualteacher eval runs/demo/dual_teacher_seed0/best.pt --models all eval.mode=sliding",
    )
    p.add_argument("checkpoint", help="latest.pt / best.pt of a run")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.root=...)")
    p.add_argument(
        "--models", default="student", help="student (default), all, or names separated by ','"
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write a report to DIR: iou.md, iou.json, confusion.png, samples.png",
    )
    p.add_argument(
        "--samples",
        type=NON_NEGATIVE,
        default=8,
        help="validation images in samples.png (default 8)",
    )
    p.set_defaults(func=_cmd_eval)

    p = add(
        "predict",
        "segment images (files, folders, globs) with a checkpoint: index, colour and overlay PNGs",
        "dualteacher predict runs/demo/dual_teacher_seed0/best.pt photos/ 'more/*.jpg' "
        "--out runs/pred"
        "\n  dualteacher predict best.pt big.jpg eval.mode=sliding eval.crop_size=256 --out pred",
    )
    p.add_argument(
        "checkpoint", help="latest.pt / best.pt of a run, or a directory of `dualteacher export`"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or glob patterns; config overrides "
        "section.key=value may follow (e.g. eval.mode=sliding)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--models", default="student", help="student (default), all, or names separated by ','"
    )
    p.add_argument("--batch-size", type=COUNT, help="images per forward (default eval.batch_size)")
    p.add_argument("--alpha", type=FRACTION, default=0.5, help="colour weight of the overlay, 0..1")
    p.add_argument(
        "--device",
        help="cpu, cuda, cuda:N (default: a checkpoint's train.device; an export: "
        "cuda if there is one (torch), cpu (onnx))",
    )
    p.add_argument("--workers", type=NON_NEGATIVE, default=0, help="image-reading worker processes")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default) or onnx: ONNX Runtime on an exported directory with model.onnx "
        "(pip install 'dualteacher[onnx]')",
    )
    p.set_defaults(func=_cmd_predict)

    p = add(
        "export",
        "write one model of a checkpoint for deployment: model.safetensors (weights), "
        "model.json (architecture, classes, normalisation, metrics, config), a README.md model "
        "card and, with --format onnx, model.onnx (dynamic batch and size)",
        "dualteacher export runs/demo/dual_teacher_seed0/best.pt --out exported/demo "
        "--format safetensors,onnx\n  dualteacher predict exported/demo photos/ --out pred "
        "--runtime onnx",
    )
    p.add_argument("checkpoint", help="latest.pt / best.pt of a run")
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides key=value stored as the inference settings (e.g. eval.mode=sliding)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        default="safetensors",
        help="safetensors (default), onnx, or both: safetensors,onnx",
    )
    p.add_argument(
        "--model", default="student", help="student (default) or a teacher: teacher_a, ..."
    )
    p.set_defaults(func=_cmd_export)

    p = add(
        "compare",
        "train several methods on the same data, model, seeds and budget and tabulate them",
        "dualteacher compare demo --methods supervised,dual_teacher --steps 500 --seeds 3"
        "\n  dualteacher compare configs/demo.yaml data.demo.num_labeled=48 "
        "--methods supervised,mean_teacher,dual_teacher --minutes 5 --out runs/cmp",
    )
    p.add_argument("config", help="YAML config file, or the name of a built-in config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, shared by all runs")
    p.add_argument("--methods", required=True, help="method names separated by ','")
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
    p.add_argument("--rescan", action="store_true", help=RESCAN_HELP)
    p.set_defaults(func=_cmd_compare)

    p = add(
        "suggest",
        "rank unlabelled images by what labelling them is likely to teach (teacher "
        "disagreement, student uncertainty, class rarity): ranking.csv, top.txt, "
        "contact_sheet.png, suggest.json",
        "dualteacher suggest runs/demo/dual_teacher_seed0/best.pt --top 20 --out runs/next"
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
    p.add_argument("checkpoint", help="latest.pt / best.pt of a run")
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value (e.g. data.root=my_data)"
    )
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
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the checkpoint's train.device)")
    p.add_argument("--batch-size", type=int, help="images per forward (default eval.batch_size)")
    p.add_argument("--workers", type=int, default=0, help="image-reading worker processes")
    p.set_defaults(func=_cmd_suggest)

    p = add(
        "pseudolabel",
        "write pseudo-labels of images as masks in the folder dataset's format (OUT/masks/), "
        "255 = ignore below --conf, and confidence maps (OUT/confidence/)",
        "dualteacher pseudolabel runs/demo/dual_teacher_seed0/best.pt --images my_data/unlabeled "
        "--out runs/pseudo --conf 0.9",
    )
    p.add_argument("checkpoint", help="latest.pt / best.pt of a run")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. eval.mode=...)")
    p.add_argument(
        "--images", nargs="+", required=True, metavar="INPUT", help="image files, folders, globs"
    )
    p.add_argument("--out", required=True, help="output directory (masks/, confidence/)")
    p.add_argument(
        "--conf",
        type=float,
        default=0.95,
        help="pixels whose top probability is below this are 255 = ignore (default 0.95)",
    )
    p.add_argument(
        "--model", default="student", help="student (default), teacher_a, teacher_b, teacher"
    )
    p.add_argument("--overwrite", action="store_true", help="replace masks already in OUT/masks")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the checkpoint's train.device)")
    p.add_argument("--batch-size", type=int, help="images per forward (default eval.batch_size)")
    p.add_argument("--workers", type=int, default=0, help="image-reading worker processes")
    p.set_defaults(func=_cmd_pseudolabel)

    p = add(
        "demo-data",
        "write the demo dataset to disk in the folder layout, with the true masks of the "
        "unlabelled images in unlabeled_masks/",
        "dualteacher demo-data --out data/demo_folder data.demo.seed=1",
    )
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument("--config", default="demo", help="config whose data.demo is written (demo)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (data.demo.*)")
    p.set_defaults(func=_cmd_demo_data)

    p = add("configs", "list the built-in configs", "dualteacher configs")
    p.set_defaults(func=_cmd_configs)

    p = add(
        "demo",
        "train supervised and dual_teacher on the built-in demo data and compare them",
        "dualteacher demo --out runs/demo",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--jobs", type=COUNT, help="runs trained at the same time (default 2 with 2+ CPUs)"
    )
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. train.steps=200)")
    p.set_defaults(func=_cmd_demo)

    p = add(
        "check",
        "read every image and mask of a dataset config; report counts, class frequencies and "
        "every bad file (exit status 2 when there is any)",
        "dualteacher check configs/voc_classic_r101_321.yaml data.root=data/VOC2012",
    )
    p.add_argument("config", help="YAML config file, or the name of a built-in config")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. data.root=...)")
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
    p.add_argument("--rescan", action="store_true", help=RESCAN_HELP)
    p.set_defaults(func=_cmd_check)

    p = add(
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
    p.set_defaults(func=_cmd_splits)

    p = add(
        "upgrade-checkpoint",
        "rewrite a checkpoint you trust, made by an older dualteacher, in the safe format "
        "(tensors, numbers and strings only)",
        "dualteacher upgrade-checkpoint runs/old/best.pt --trust --out runs/old/best_v2.pt",
    )
    p.add_argument("checkpoint", help="the .pt file to convert")
    p.add_argument(
        "--trust",
        action="store_true",
        help="unpickle the file with weights_only=False, which runs any code it holds: "
        "only for files you made yourself",
    )
    p.add_argument("--out", help="where to write the converted file (default: in place)")
    p.set_defaults(func=_cmd_upgrade_checkpoint)

    p = add(
        "models",
        "list the registered models with their parameter counts",
        "dualteacher models segformer-b1 dpt-dinov2-s --classes 150",
    )
    p.add_argument("names", nargs="*", help="models to list (default: all)")
    p.add_argument("--classes", type=COUNT, default=21, help="number of classes (default 21)")
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
    p.add_argument("--crop", type=COUNT, help="square crop size (default: data.crop_size)")
    p.add_argument("--batch", type=COUNT, help="labelled batch size (default: data.batch_size)")
    p.add_argument("--steps", type=COUNT, default=3, help="timed steps (default 3)")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=1, help="untimed steps first (default 1)")
    p.add_argument("--classes", type=COUNT, default=21, help="number of classes (default 21)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=COUNT, help="torch CPU threads (default: torch's)")
    p.add_argument("--config", help="YAML config to start from (default: built-in defaults)")
    p.add_argument(
        "--data",
        action="store_true",
        help="read the config's dataset through the training loaders (default: random tensors)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "overrides", nargs="*", help="config overrides key=value (e.g. optim.name=adamw)"
    )
    p.set_defaults(func=_cmd_bench)
    return parser


def _close_progress_bars() -> None:
    """End every open tqdm bar, so that an error starts on a line of its own: a bar written to
    a file (stderr redirected) has no newline after its last update."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


# OS errors that are the user's environment, not a bug: reported in one line.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option, so overrides (or inputs)
    # given after an option (train CONFIG --out DIR key=value) come back as extras: hand them
    # to that list, in order.
    target = next((n for n in ("overrides", "inputs") if hasattr(args, n)), None)
    if extra:
        unknown = [a for a in extra if a.startswith("-")] if target else extra
        if unknown:
            parser.error(
                f"unrecognized argument(s) for '{args.command}': {' '.join(unknown)} "
                f"(`dualteacher {args.command} --help` lists the options)"
            )
        getattr(args, target).extend(extra)
    from dualteacher.errors import DualTeacherError

    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # commands that never load torch skip this
            from dualteacher.engine.distributed import shutdown

            shutdown()  # torchrun: leave the process group together
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except DualTeacherError as e:
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        print(f"{e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # `dualteacher ... | head`: the reader has gone. Silence the final flush of stdout
        # (Python would print another traceback for it) and exit as a SIGPIPE-killed
        # command does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        _close_progress_bars()
        if args.debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{e.strerror}. Free disk space or fix the permissions, then run "
            "the command again (a training run resumes from its last checkpoint).",
            file=sys.stderr,
        )
        sys.exit(INPUT_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
