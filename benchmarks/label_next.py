"""Helpers of ``benchmarks/label_next.sh`` and ``benchmarks/label_loop.sh`` (see there): split
files, the "person" who labels through Label Studio, and the result tables.

    python benchmarks/label_next.py splits --data DIR --k K (--ranking CSV | --random SEED) --out D
    python benchmarks/label_next.py table --out OUT --k K --seeds 0 1 2 [--note TEXT]
    python benchmarks/label_next.py annotate --data DIR --k K (--pre JSON | --random SEED) --out R
    python benchmarks/label_next.py loop-table --out OUT --k K --seeds 0 1 2 [--note TEXT]

``splits`` writes ``D/labeled.txt`` (the labelled images of ``DIR``, a ``dualteacher
demo-data`` folder, plus K images of ``DIR/unlabeled/`` with their true masks from
``DIR/unlabeled_masks/``) and ``D/unlabeled.txt`` (the other unlabelled images), as absolute
paths; the K are the best-ranked of a ``suggest`` ranking.csv, or drawn with a seed.
``table`` reads the final student mIoU of every run (``metrics.jsonl``) and writes
``OUT/label_next.md``.

``annotate`` plays the person of the label-next loop: it takes the K images of a Label Studio
pre-annotation file (``suggest --format labelstudio``), or K drawn with a seed, replaces each
model mask with the image's true mask, and writes what Label Studio would export, together
with the labels the project already had (``DIR/train``) and the validation set (``DIR/val``):
``R/train.json``, ``R/val.json`` and ``R/images/`` (links to every image of ``DIR``;
those no export names are the unlabelled set), a ``data.name=labelstudio`` root. It then reads
``R`` back through the project's reader and stops unless every mask is the true one.
``loop-table`` writes ``OUT/label_loop.md`` (and ``.json``): base and the three arms of
``label_loop.sh``, with paired differences.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from dualteacher.config import load_config
from dualteacher.data import build_data
from dualteacher.data.annotations import Prediction, labelstudio_image, labelstudio_task
from dualteacher.study.compare import paired_difference

ARMS = ("base", "random", "suggest")
# label_loop.sh: after base, continue from base with the K suggested or K random images added,
# and train from scratch on the suggested ones (the same labels as continue_suggest).
LOOP_ARMS = ("base", "continue_random", "continue_suggest", "scratch_suggest")
LOOP_DIFFS = (("continue_suggest", "continue_random"), ("continue_suggest", "scratch_suggest"))
# How Label Studio serves files of local storage: the URL form a real project's tasks carry.
PREFIX = "/data/local-files/?d=images/"


def pool(data: Path) -> list[Path]:
    """The unlabelled images of a demo-data folder, sorted."""
    return sorted((data / "unlabeled").glob("*.png"))


def pick_suggested(ranking: Path, data: Path, k: int) -> list[Path]:
    """The ``k`` best-ranked images of ``ranking`` (a suggest ranking.csv) in ``data``'s pool."""
    candidates = {p.resolve(): p for p in pool(data)}
    with open(ranking, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["rank"]))
    chosen = [candidates[Path(r["path"]).resolve()] for r in rows if r["path"]]
    if len(chosen) != len(candidates):
        raise SystemExit(
            f"{ranking} ranks {len(chosen)} images, the pool of {data} has {len(candidates)}"
        )
    return chosen[:k]


def pick_random(data: Path, k: int, seed: int) -> list[Path]:
    return random.Random(seed).sample(pool(data), k)


def write_splits(data: Path, chosen: list[Path], out: Path) -> None:
    data = data.resolve()
    out.mkdir(parents=True, exist_ok=True)
    labeled = [
        (p, data / "train" / "masks" / p.name) for p in sorted((data / "train/images").glob("*"))
    ]
    labeled += [(p.resolve(), data / "unlabeled_masks" / p.name) for p in chosen]
    for _image, mask in labeled:
        if not mask.is_file():
            raise SystemExit(f"{mask} not found: is {data} a `dualteacher demo-data` folder?")
    taken = {p.resolve() for p in chosen}
    rest = [p.resolve() for p in pool(data) if p.resolve() not in taken]
    (out / "labeled.txt").write_text("".join(f"{i} {m}\n" for i, m in labeled))
    (out / "unlabeled.txt").write_text("".join(f"{p}\n" for p in rest))
    (out / "added.txt").write_text("".join(f"{p.name}\n" for p in chosen))


def final_miou(run: Path) -> float:
    """The student's mIoU at the last validation of a run directory."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    val = [r for r in rows if "miou_student" in r]
    if not val:
        raise SystemExit(f"{run}/metrics.jsonl has no validation row")
    return max(val, key=lambda r: r["step"])["miou_student"]


def _mean_std(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def table(out: Path, k: int, seeds: list[int], note: str = "") -> str:
    res = {s: {a: final_miou(out / f"seed{s}" / a) for a in ARMS} for s in seeds}
    lines = [
        f"# Label next: {k} more labels chosen by `suggest` vs. at random",
        "",
        *([note, ""] if note else []),
        f"Final student mIoU on the validation set; seeds {', '.join(map(str, seeds))}.",
        "",
        f"| seed | base | + {k} random | + {k} suggested | suggested - random |",
        "|---|---|---|---|---|",
    ]
    for s in seeds:
        r = res[s]
        diff = r["suggest"] - r["random"]
        lines.append(
            f"| {s} | {r['base']:.2f} | {r['random']:.2f} | {r['suggest']:.2f} | {diff:+.2f} |"
        )
    col = {a: [res[s][a] for s in seeds] for a in ARMS}
    diffs = [res[s]["suggest"] - res[s]["random"] for s in seeds]
    lines.append(
        f"| mean ± std | {_mean_std(col['base'])} | {_mean_std(col['random'])} | "
        f"{_mean_std(col['suggest'])} | {_mean_std(diffs)} |"
    )
    text = "\n".join(lines) + "\n"
    (out / "label_next.md").write_text(text)
    (out / "label_next.json").write_text(json.dumps({"k": k, "seeds": seeds, "miou": res}))
    return text


# ------------------------------------------------------------------------ the label loop
def demo_classes(data: Path) -> list[str]:
    """The class names of a demo-data folder, in id order (its ``classes.yaml``)."""
    return [c["name"] for c in yaml.safe_load((data / "classes.yaml").read_text())["classes"]]


def corrected(task: dict, mask: np.ndarray, classes: list[str], task_id: int) -> dict:
    """``task`` as Label Studio exports it after a person labelled it with ``mask``: one
    submitted annotation (encoded by the project's writer, ``labelstudio_task``); a
    pre-annotation it came with stays, as in a real export (the reader ignores it)."""
    regions = labelstudio_task(
        Prediction(task["data"]["image"], mask), classes, model_version="truth"
    )["predictions"][0]["result"]
    annotation = {"id": task_id, "result": regions, "was_cancelled": False}
    return task | {"id": task_id, "annotations": [annotation]}


def _task(image: Path) -> dict:
    return {"data": {"image": PREFIX + image.name}}


def _truth(folder: Path, image: Path) -> np.ndarray:
    return np.asarray(Image.open(folder / image.name))


def _write_if_changed(path: Path, text: str) -> None:
    # A second run computes the same bytes: leave the file alone, so that a resumed run reads
    # the very file it started on (its data fingerprint checks names and sizes only).
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def annotate(data: Path, out: Path, new_tasks: list[dict], config: str = "demo") -> list[str]:
    """Write ``out`` (see the module docstring): the labelled images of ``data`` and those of
    ``new_tasks`` (tasks naming images of ``data``'s unlabelled pool) labelled with their true
    masks, ``data``'s validation set, links to every image. Returns the added images' names.
    Stops unless the project's reader reads every mask back as the true one."""
    data, out = data.resolve(), out.resolve()
    classes = demo_classes(data)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for folder in ("train/images", "val/images", "unlabeled"):
        for image in sorted((data / folder).glob("*.png")):
            link = images / image.name
            if not link.is_symlink():
                link.symlink_to(image)
    taken = {p.name for p in pool(data)}
    added = [labelstudio_image(t["data"], images).name for t in new_tasks]
    if not set(added) <= taken or len(set(added)) != len(added):
        raise SystemExit(f"the tasks name {added}: not distinct images of {data / 'unlabeled'}")
    # The labels the project had are in the tool too (a real project holds all its tasks):
    # the export to train on is then the one file the tool gives.
    old = sorted((data / "train/images").glob("*.png"))
    train_tasks = [
        corrected(_task(p), _truth(data / "train/masks", p), classes, i)
        for i, p in enumerate(old, 1)
    ]
    train_tasks += [
        corrected(t, _truth(data / "unlabeled_masks", Path(name)), classes, len(old) + i)
        for i, (t, name) in enumerate(zip(new_tasks, added), 1)
    ]
    val_tasks = [
        corrected(_task(p), _truth(data / "val/masks", p), classes, i)
        for i, p in enumerate(sorted((data / "val/images").glob("*.png")), 1)
    ]
    _write_if_changed(out / "train.json", json.dumps(train_tasks))
    _write_if_changed(out / "val.json", json.dumps(val_tasks))
    _write_if_changed(out / "added.txt", "".join(f"{n}\n" for n in added))
    check_import(data, out, added, config)
    return added


def check_import(data: Path, root: Path, added: list[str], config: str = "demo") -> None:
    """Stop unless ``root`` read as ``data.name=labelstudio`` holds ``data``'s labelled images
    and ``added`` with their true masks, ``data``'s validation set with its masks, the rest of
    the pool unlabelled, and ``data``'s classes in their order: the arms are to differ by
    which images were labelled, never by what the export and import made of the labels."""
    cfg = load_config(config, ["data.name=labelstudio", f"data.root={root}"])
    bundle = build_data(cfg.data)
    if bundle.classes != demo_classes(data):
        raise SystemExit(f"{root}: classes {bundle.classes}, {data} has {demo_classes(data)}")
    truth = {p.stem: p for p in (data / "train/masks").glob("*.png")}
    truth |= {Path(n).stem: data / "unlabeled_masks" / n for n in added}
    val_truth = {p.stem: p for p in (data / "val/masks").glob("*.png")}
    for source, expected in ((bundle.labeled, truth), (bundle.val, val_truth)):
        names = [source.load(i).name for i in range(len(source))]
        if sorted(names) != sorted(expected):
            raise SystemExit(f"{root}: {len(names)} images read, {len(expected)} expected")
        for i in range(len(source)):
            s = source.load(i)
            if not np.array_equal(s.mask, np.asarray(Image.open(expected[s.name]))):
                raise SystemExit(f"{root}: the mask of {s.name} read back is not its true mask")
    rest = len(pool(data)) - len(added)
    if len(bundle.unlabeled) != rest:
        raise SystemExit(f"{root}: {len(bundle.unlabeled)} unlabelled images, {rest} expected")


def loop_table(out: Path, k: int, seeds: list[int], note: str = "") -> str:
    """``OUT/label_loop.md`` and ``.json``: final student mIoU per seed and arm, mean ± std,
    and the paired differences of ``LOOP_DIFFS`` (per seed, mean, std, Student-t 95 %)."""
    res = {s: {a: final_miou(out / f"seed{s}" / a) for a in LOOP_ARMS} for s in seeds}
    col = {a: [res[s][a] for s in seeds] for a in LOOP_ARMS}
    diffs = {f"{a} - {b}": paired_difference(col[a], col[b]) for a, b in LOOP_DIFFS}
    lines = [
        f"# One round of the label-next loop: {k} more labels, then continue or start over",
        "",
        *([note, ""] if note else []),
        f"Final student mIoU on the validation set; seeds {', '.join(map(str, seeds))}.",
        "",
        f"| seed | base | continue + {k} random | continue + {k} suggested | "
        f"scratch, {k} suggested | {' | '.join(diffs)} |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(seeds):
        per_seed = " | ".join(f"{d['per_seed'][i]:+.2f}" for d in diffs.values())
        lines.append(
            f"| {s} | " + " | ".join(f"{res[s][a]:.2f}" for a in LOOP_ARMS) + f" | {per_seed} |"
        )
    lines.append(
        "| mean ± std | "
        + " | ".join(_mean_std(col[a]) for a in LOOP_ARMS)
        + " | "
        + " | ".join(_paired_text(d) for d in diffs.values())
        + " |"
    )
    lines += [
        "",
        "Differences: paired by seed, mean ± std [95 % interval of the mean, Student's t].",
    ]
    text = "\n".join(lines) + "\n"
    (out / "label_loop.md").write_text(text)
    summary = {"k": k, "seeds": seeds, "arms": list(LOOP_ARMS), "miou": res, "differences": diffs}
    (out / "label_loop.json").write_text(json.dumps(summary, indent=1))
    return text


def _paired_text(d: dict) -> str:
    text = f"{d['mean']:+.2f}" if d["std"] is None else f"{d['mean']:+.2f} ± {d['std']:.2f}"
    if d["ci95"] is not None:
        text += f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
    return text


def _table_args(p: argparse.ArgumentParser) -> None:
    """The options of both tables (``table``, ``loop-table``): where the runs are, K, seeds."""
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--note", default="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("splits")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--k", type=int, required=True)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ranking", type=Path)
    how.add_argument("--random", type=int, metavar="SEED")
    p.add_argument("--out", type=Path, required=True)
    _table_args(sub.add_parser("table"))
    p = sub.add_parser("annotate")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--k", type=int, required=True)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--pre", type=Path, help="a Label Studio pre-annotation file of suggest")
    how.add_argument("--random", type=int, metavar="SEED")
    p.add_argument("--config", default="demo")
    p.add_argument("--out", type=Path, required=True)
    _table_args(sub.add_parser("loop-table"))
    args = parser.parse_args(argv)
    if args.cmd == "annotate":
        if args.pre is not None:
            tasks = json.loads(args.pre.read_text())
        else:
            tasks = [_task(p) for p in pick_random(args.data, args.k, args.random)]
        if len(tasks) != args.k:
            raise SystemExit(f"{args.pre} holds {len(tasks)} tasks, --k is {args.k}")
        added = annotate(args.data, args.out, tasks, args.config)
        print(f"{args.out}: {len(added)} images labelled with their true masks, read back")
    elif args.cmd == "loop-table":
        print(loop_table(args.out, args.k, args.seeds, args.note), end="")
    elif args.cmd == "splits":
        if args.ranking is not None:
            chosen = pick_suggested(args.ranking, args.data, args.k)
        else:
            chosen = pick_random(args.data, args.k, args.random)
        write_splits(args.data, chosen, args.out)
    else:
        print(table(args.out, args.k, args.seeds, args.note), end="")


if __name__ == "__main__":
    main()
