"""Datasets: a registry of builders ``DataConfig -> DataBundle`` selected by ``data.name``."""

from __future__ import annotations

from collections.abc import Callable

from dualteacher.config import DataConfig
from dualteacher.data.base import ArraySource, DataBundle, SegSource
from dualteacher.errors import ConfigError


def build_demo(cfg: DataConfig) -> DataBundle:
    """The built-in demo dataset, generated in memory from ``cfg.demo`` (see ``data.demo``)."""
    from dualteacher.data import demo

    sets = {s: demo.generate(cfg.demo, s) for s in ("labeled", "unlabeled", "val")}
    return DataBundle(
        labeled=ArraySource(*sets["labeled"], prefix="labeled"),
        # Unlabelled masks are generated (same random stream) but never handed out.
        unlabeled=ArraySource(sets["unlabeled"][0], None, prefix="unlabeled"),
        val=ArraySource(*sets["val"], prefix="val"),
        classes=list(demo.CLASSES),
        palette=list(demo.PALETTE),
    )


DATASETS: dict[str, Callable[[DataConfig], DataBundle]] = {
    "demo": build_demo,
}


def build_data(cfg: DataConfig) -> DataBundle:
    """Build the dataset named by ``cfg.name``."""
    if cfg.name not in DATASETS:
        raise ConfigError(
            f"unknown dataset data.name={cfg.name!r}. Available: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[cfg.name](cfg)


__all__ = ["DATASETS", "DataBundle", "SegSource", "build_data"]
