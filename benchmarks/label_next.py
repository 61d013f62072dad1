"""Helpers of ``benchmarks/label_next.sh`` (see there): split files and the result table.

    python benchmarks/label_next.py splits --data DIR --k K (--ranking CSV | --random SEED) --out D
    python benchmarks/label_next.py table --out OUT --k K --seeds 0 1 2 [--note TEXT]

``splits`` writes ``D/labeled.txt`` (the labelled images of ``DIR``, a ``dualteacher
demo-data`` folder, plus K images of ``DIR/unlabeled/`` with their true masks from
``DIR/unlabeled_masks/``) and ``D/unlabeled.txt`` (the other unlabelled images), as absolute
paths; the K are the best-ranked of a ``suggest`` ranking.csv, or drawn with a seed.
``table`` reads the final student mIoU of every run (``metrics.jsonl``) and writes
``OUT/label_next.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
from pathlib import Path

ARMS = ("base", "random", "suggest")


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
    p = sub.add_parser("table")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.cmd == "splits":
        if args.ranking is not None:
            chosen = pick_suggested(args.ranking, args.data, args.k)
        else:
            chosen = pick_random(args.data, args.k, args.random)
        write_splits(args.data, chosen, args.out)
    else:
        print(table(args.out, args.k, args.seeds, args.note), end="")


if __name__ == "__main__":
    main()
