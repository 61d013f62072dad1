"""Train several methods on the same data, model, seeds and step budget, and compare them.

``dualteacher demo`` is this comparison of ``supervised`` and ``dual_teacher`` on the built-in
demo dataset. Results go to ``OUT/summary.json`` (``{"results": [{"method", "miou",
"best_miou", "seconds", ...}]}``, mIoU in percent) and ``OUT/miou_vs_time.png``; each run keeps
its own directory ``OUT/<method>[_seed<k>]``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from dualteacher.config import Config
from dualteacher.engine.trainer import TrainResult, train


def _with(cfg: Config, method: str, seed: int, out_dir: Path) -> Config:
    return replace(
        cfg,
        method=replace(cfg.method, name=method),
        train=replace(cfg.train, seed=seed, out_dir=str(out_dir)),
    )


def compare(
    cfg: Config, methods: list[str], out_dir: str | Path, seeds: list[int] | None = None
) -> dict:
    """Train every method for every seed with ``cfg``; write and return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = seeds or [cfg.train.seed]
    runs: dict[str, list[TrainResult]] = {}
    for method in methods:
        for seed in seeds:
            name = method if len(seeds) == 1 else f"{method}_seed{seed}"
            print(f"\n=== {name} ===")
            runs.setdefault(method, []).append(train(_with(cfg, method, seed, out_dir / name)))
    results = []
    for method, rs in runs.items():
        mious = [r.miou for r in rs]
        row = {
            "method": method,
            "miou": statistics.fmean(mious),
            "best_miou": statistics.fmean(r.best_miou for r in rs),
            "seconds": statistics.fmean(r.train_seconds for r in rs),
            "steps": rs[0].steps,
            "seeds": seeds,
            "miou_per_seed": mious,
        }
        if len(rs) > 1:
            row["miou_std"] = statistics.stdev(mious)
        results.append(row)
    summary = {"results": results}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_miou_vs_time(runs, out_dir / "miou_vs_time.png")
    print("\n" + format_summary(results))
    print(f"\nsummary: {out_dir / 'summary.json'}   plot: {out_dir / 'miou_vs_time.png'}")
    return summary


def format_summary(results: list[dict]) -> str:
    lines = [f"{'method':<16}{'final mIoU':>12}{'best mIoU':>12}{'seconds':>10}"]
    for r in results:
        spread = f" ±{r['miou_std']:.2f}" if "miou_std" in r else ""
        lines.append(
            f"{r['method']:<16}{r['miou']:>12.2f}{r['best_miou']:>12.2f}{r['seconds']:>10.0f}"
            + spread
        )
    return "\n".join(lines)


def plot_miou_vs_time(runs: dict[str, list[TrainResult]], path: Path) -> None:
    """Validation mIoU of the student against training wall-clock, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, (method, rs) in enumerate(runs.items()):
        for j, r in enumerate(rs):
            t = [h["time"] for h in r.history]
            m = [h["miou_student"] for h in r.history]
            ax.plot(t, m, color=f"C{i}", marker="o", ms=3, label=method if j == 0 else None)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("validation mIoU (%) of the student")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
