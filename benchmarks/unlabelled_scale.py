"""Start-up time and memory of a training run against the size of its unlabelled pool.

For each pool size, builds (once, under --work) a ``data.name=folder`` dataset whose
``unlabeled/`` holds that many images in 100 sub-folders, all hard links to a few real PNGs
(the disk stays small; ext4 allows 65,000 links per file, so one source image per 60,000
links), plus 8 labelled and 2 validation images. Then, each in a fresh process, trains one
step of Dual Teacher with a tiny model for every ``--workers`` value with a cold scan, and
once more with the scan index the first run wrote (``cached``). Reports, as a Markdown table
and as JSON (``--json``):

- ``scan``: the folder scans (0 when read from the index);
- ``build``: the rest of building the data (tables, index, checks);
- ``setup``: models, optimizer, loaders (does not depend on the pool);
- ``first batch``: from the loaders' start (worker processes) to the first labelled and
  unlabelled batches;
- ``to step 1``: from the process start (interpreter and imports included) to the end of the
  first training step;
- peak RSS of the main process, of each worker (the largest, and all in the JSON), of main +
  workers together, and their PSS (shared pages counted once: what they really use together).
Memory is sampled every 20 ms from /proc (Linux only) until the first step ends.

    python benchmarks/unlabelled_scale.py --sizes 1000,10000,100000,1000000 --workers 0,4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

SUBFOLDERS = 100
LINKS_PER_SOURCE = 60_000  # below ext4's 65,000 hard links per file


# ----------------------------------------------------------------------------------- pools
def make_pool(root: Path, size: int) -> Path:
    """The folder dataset of ``size`` unlabelled entries at ``root`` (kept when complete)."""
    done = root / ".complete"
    if done.is_file():
        return root
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "classes.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text("classes: [background, thing]\n")

    def save(path: Path, array, mode=None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(path)

    for split, n in (("train", 8), ("val", 2)):
        for i in range(n):
            save(root / split / "images" / f"{i}.png", rng.integers(0, 256, (48, 64, 3), np.uint8))
            mask = np.zeros((48, 64), np.uint8)
            mask[:, 32:] = 1
            save(root / split / "masks" / f"{i}.png", mask)
    sources = []
    for k in range(max(4, math.ceil(size / LINKS_PER_SOURCE))):
        p = root / "sources" / f"s{k}.png"
        save(p, rng.integers(0, 256, (48, 64, 3), np.uint8))
        sources.append(os.fspath(p))
    unl = root / "unlabeled"
    per = math.ceil(size / SUBFOLDERS)
    for d in range(SUBFOLDERS):
        folder = unl / f"d{d:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(d * per, min(size, (d + 1) * per)):
            dst = os.path.join(folder, f"u{i:08d}.png")
            if not os.path.exists(dst):
                os.link(sources[i % len(sources)], dst)
    done.write_text(f"{size}\n")
    return root


# ----------------------------------------------------------------------------------- child
def _proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB (0, 0 once it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class MemorySampler(threading.Thread):
    """Peak RSS per process of this process's tree, and peak sums, until ``stop()``."""

    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        self.period, self.running = period, True
        self.peak: dict[int, int] = {}
        self.peak_sum_rss = self.peak_sum_pss = 0

    def run(self) -> None:
        me = os.getpid()
        while self.running:
            total_rss = total_pss = 0
            for pid in _proc_tree(me):
                rss, pss = _memory_kb(pid)
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
                total_rss, total_pss = total_rss + rss, total_pss + pss
            self.peak_sum_rss = max(self.peak_sum_rss, total_rss)
            self.peak_sum_pss = max(self.peak_sum_pss, total_pss)
            time.sleep(self.period)

    def stop(self) -> None:
        self.running = False
        self.join()


def child(args: argparse.Namespace) -> None:
    t0 = float(os.environ["DT_BENCH_T0"])  # the parent's clock just before starting us
    sampler = MemorySampler()
    sampler.start()
    import torch

    from dualteacher.config import load_config
    from dualteacher.data import index as index_module
    from dualteacher.engine import guard, run, step, trainer

    torch.set_num_threads(args.threads)
    marks: dict[str, float] = {"imported": time.time()}
    spent = {"scan": 0.0}

    scan_folder = index_module.scan_folder

    def timed_scan(*a, **kw):
        t = time.time()
        try:
            return scan_folder(*a, **kw)
        finally:
            spent["scan"] += time.time() - t

    index_module.scan_folder = timed_scan
    build_data = run.build_data
    sizes = {}

    def timed_build(*a, **kw):
        marks["build_start"] = time.time()
        bundle = build_data(*a, **kw)
        marks["build_end"] = time.time()
        sizes["unlabeled"] = len(bundle.unlabeled)
        sizes["table_bytes"] = bundle.unlabeled.entries.nbytes
        return bundle

    run.build_data = timed_build
    watch = guard.BadSampleLog._watch
    firsts: list[float] = []

    def timed_watch(self, it):
        marks.setdefault("loaders", time.time())
        for i, batch in enumerate(watch(self, it)):
            if i == 0:
                firsts.append(time.time())
            yield batch

    guard.BadSampleLog._watch = timed_watch
    step_call = step.StepRunner.__call__

    def timed_step(self, *a, **kw):
        out = step_call(self, *a, **kw)
        if "step1" not in marks:
            marks["step1"] = time.time()
            sampler.stop()
        return out

    step.StepRunner.__call__ = timed_step

    overrides = [
        "data.name=folder",
        f"data.root={args.root}",
        f"data.index={args.index}",
        f"data.num_workers={args.workers}",
        "data.crop_size=32",
        "data.batch_size=2",
        "model.name=unet-r18",
        "model.pretrained=null",
        "train.steps=1",
        "train.eval_every=1000",
        "train.ckpt_every=1000",
        f"train.threads={args.threads}",
        "train.progress=false",
        "train.tensorboard=false",
        "train.curves=false",
        f"train.out_dir={args.out}",
    ]
    trainer.train(load_config("demo", overrides), stop_after=1)
    me = os.getpid()
    workers = sorted(kb for pid, kb in sampler.peak.items() if pid != me and kb > 0)
    result = {
        "size": args.size,
        "workers": args.workers,
        "index": "cached" if args.cached else "cold",
        "unlabeled": sizes["unlabeled"],
        "table_bytes": sizes["table_bytes"],
        "import_s": marks["imported"] - t0,
        "scan_s": spent["scan"],
        "build_s": marks["build_end"] - marks["build_start"] - spent["scan"],
        "setup_s": marks["loaders"] - marks["build_end"],
        "first_batch_s": max(firsts[:2]) - marks["loaders"],
        "to_step1_s": marks["step1"] - t0,
        "rss_main_mb": sampler.peak[me] / 1024,
        "rss_worker_max_mb": (workers[-1] / 1024) if workers else 0.0,
        "rss_workers_mb": [kb / 1024 for kb in workers],
        "rss_sum_mb": sampler.peak_sum_rss / 1024,
        "pss_sum_mb": sampler.peak_sum_pss / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------- parent
def run_child(root: Path, size: int, workers: int, index: Path, out: Path, cached: bool, threads):
    argv = [sys.executable, __file__, "--child", "--root", str(root), "--size", str(size)]
    argv += ["--workers", str(workers), "--index", str(index), "--out", str(out)]
    argv += ["--threads", str(threads)] + (["--cached"] if cached else [])
    env = {**os.environ, "DT_BENCH_T0": repr(time.time())}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"run size={size} workers={workers} failed (status {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


COLUMNS = [
    ("size", "pool", "{:,}"),
    ("workers", "workers", "{}"),
    ("index", "index", "{}"),
    ("scan_s", "scan s", "{:.2f}"),
    ("build_s", "build s", "{:.2f}"),
    ("setup_s", "setup s", "{:.2f}"),
    ("first_batch_s", "first batch s", "{:.2f}"),
    ("to_step1_s", "to step 1 s", "{:.1f}"),
    ("rss_main_mb", "RSS main MB", "{:.0f}"),
    ("rss_worker_max_mb", "RSS worker MB (max)", "{:.0f}"),
    ("rss_sum_mb", "RSS main+workers MB", "{:.0f}"),
    ("pss_sum_mb", "PSS main+workers MB", "{:.0f}"),
    ("table_bytes", "table B/entry", "{}"),
]


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r[key]
            if key == "table_bytes":
                v = round(v / max(1, r["unlabeled"]), 1)
            cells.append(fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes", default="1000,10000,100000,1000000", help="pool sizes, comma-separated"
    )
    ap.add_argument("--workers", default="0,4", help="data.num_workers values, comma-separated")
    ap.add_argument("--work", default="/tmp/dualteacher_scale", help="where pools and runs go")
    ap.add_argument("--threads", type=int, default=2, help="train.threads (default 2)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.workers = int(args.workers)
        child(args)
        return
    work = Path(args.work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]
    rows = []
    for size in sizes:
        t = time.time()
        root = make_pool(work / f"pool_{size}", size)
        print(f"pool of {size:,}: {root} ({time.time() - t:.0f} s)", file=sys.stderr)
        # a folder changed less than 2 s before its scan is not cached (index.RACY_SECONDS)
        time.sleep(max(0.0, (root / ".complete").stat().st_mtime + 2.5 - time.time()))
        for w in workers:
            index = work / f"index_{size}_w{w}.npz"
            index.unlink(missing_ok=True)
            runs = work / "runs" / f"{size}_w{w}"
            subprocess.run(["rm", "-rf", str(runs)], check=True)
            rows.append(run_child(root, size, w, index, runs, False, args.threads))
            print(json.dumps(rows[-1]), file=sys.stderr)
        # the index the first cold run wrote, read by a fresh process (a resumed run)
        runs = work / "runs" / f"{size}_cached"
        subprocess.run(["rm", "-rf", str(runs)], check=True)
        index = work / f"index_{size}_w{workers[0]}.npz"
        rows.append(run_child(root, size, workers[0], index, runs, True, args.threads))
        print(json.dumps(rows[-1]), file=sys.stderr)
    table = markdown(rows)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "markdown": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
