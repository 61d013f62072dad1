"""``train`` as users call it (``dualteacher train``, ``compare``, ``from dualteacher import
train``): the engine's loop (``engine.trainer.train``) with ``curves.png`` redrawn after each
validation when ``train.curves`` is true. The loop itself only emits metrics
(``metrics.jsonl``); drawing is this floor's job.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dualteacher.config import Config
from dualteacher.data import DataBundle
from dualteacher.engine import trainer as engine
from dualteacher.engine.trainer import TrainResult
from dualteacher.plots import plot_training_curves, read_metrics

log = logging.getLogger(__name__)


def write_curves(out_dir: Path, epoch_steps: int) -> None:
    """Redraw ``curves.png`` from ``metrics.jsonl``; a plotting failure never stops training."""
    try:
        plot_training_curves(
            read_metrics(out_dir / "metrics.jsonl"), out_dir / "curves.png", epoch_steps
        )
    except Exception as e:  # matplotlib problems, a full disk, odd metrics rows
        log.warning("could not write %s: %s: %s", out_dir / "curves.png", type(e).__name__, e)


def train(
    cfg: Config, *, stop_after: int | None = None, bundle: DataBundle | None = None
) -> TrainResult:
    """Train ``cfg`` (see ``engine.trainer.train``), drawing ``curves.png`` in the run
    directory at every validation when ``train.curves`` is true."""
    hook = write_curves if cfg.train.curves else None
    return engine.train(cfg, stop_after=stop_after, bundle=bundle, on_validation=hook)


__all__ = ["TrainResult", "train", "write_curves"]
