"""``dualteacher demo``: supervised vs. Dual Teacher on the built-in demo dataset.

Same model, seed, data and step budget for both (``configs/demo.yaml``); see ``compare``.
"""

from __future__ import annotations

from pathlib import Path

from dualteacher.compare import compare
from dualteacher.config import load_config

DEMO_METHODS = ["supervised", "dual_teacher"]


def run_demo(
    out_dir: str | Path = "runs/demo", overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """Train both methods on the demo data; returns the ``summary.json`` content."""
    cfg = load_config("demo", overrides)
    return compare(cfg, DEMO_METHODS, out_dir)
