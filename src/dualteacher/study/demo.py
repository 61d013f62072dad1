"""``dualteacher demo``: supervised vs. Dual Teacher on the built-in demo dataset.

Same model, data and seeds for every row (``configs/demo.yaml``); see ``study.compare``. The
recipe the gain suite supports (``docs/gain.md``, chosen on its tuning draws): supervised
first, for twice the demo's 600 steps; then, from each seed's final supervised checkpoint,
Dual Teacher for 600 steps (``dual_teacher@supervised:2x``) and, as the control, supervised
for the same 600 steps (``supervised@supervised:2x``), so that the difference is what the
unlabelled images add, not what more steps add. Three training seeds, two runs at a time on a
machine with two or more CPUs: about 12 minutes on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

from dualteacher.config import load_config
from dualteacher.study.compare import compare

DEMO_METHODS = ["supervised:2x", "dual_teacher@supervised:2x", "supervised@supervised:2x"]
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
