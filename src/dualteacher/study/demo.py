"""``dualteacher demo``: supervised vs. Dual Teacher on the built-in demo dataset.

Same model, data and seeds for both rows (``configs/demo.yaml``); see ``study.compare``. Dual
Teacher gets the demo's 600 steps and supervised twice that, which is past its plateau on this
data, so its best validation mIoU is its ceiling (``benchmarks/ssl_gain.sh`` has supervised at
equal steps too). Three training seeds, two runs at a time on a machine with two or more CPUs:
about 10 minutes on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

from dualteacher.config import load_config
from dualteacher.study.compare import compare

DEMO_METHODS = ["supervised:2x", "dual_teacher"]
DEMO_SEEDS = [0, 1, 2]


def run_demo(
    out_dir: str | Path = "runs/demo",
    overrides: list[str] | tuple[str, ...] = (),
    seeds: list[int] | None = None,
    jobs: int | None = None,
) -> dict:
    """Train the demo's rows for every seed; returns the ``summary.json`` content.

    ``jobs``: runs at a time (default: 2 when the machine has 2 or more CPUs). Every run
    uses one CPU thread whatever ``jobs`` is, so the numbers do not depend on the machine's
    CPU count (``overrides`` may set ``train.threads``)."""
    cfg = load_config("demo", ["train.threads=1", *overrides])
    if jobs is None:
        jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    return compare(cfg, DEMO_METHODS, out_dir, seeds or DEMO_SEEDS, jobs=jobs)
