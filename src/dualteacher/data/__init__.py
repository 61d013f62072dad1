"""Datasets: a registry of builders ``DataConfig -> DataBundle`` selected by ``data.name``.

- ``demo``: generated in memory (``data.demo``);
- ``voc``, ``cityscapes``, ``ade20k``: the benchmarks as distributed, at ``data.root``;
- ``folder``: the user's own images and masks at ``data.root`` (``data/folder.py``).

``build_data`` also checks that every listed file exists (one ``stat`` each), that the
labelled and validation sets are not empty, and the headers of the validation files (images
that are no images, masks of another size); ``dualteacher check`` reads every file.
"""

from __future__ import annotations

from collections.abc import Callable

from dualteacher.config import DataConfig
from dualteacher.data import ade20k, cityscapes, folder, voc
from dualteacher.data.base import ArraySource, DataBundle, SegSource
from dualteacher.errors import ConfigError, DataError


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
    "voc": voc.build,
    "cityscapes": cityscapes.build,
    "ade20k": ade20k.build,
    "folder": folder.build,
}

# (labelled candidates, other unlabelled images) of a dataset, for `dualteacher splits`
SPLIT_POOLS = {
    "voc": voc.split_pool,
    "cityscapes": cityscapes.split_pool,
    "ade20k": ade20k.split_pool,
    "folder": folder.split_pool,
}

MAX_LISTED = 10  # problems shown in one error message; `dualteacher check` lists them all


def build_data(cfg: DataConfig, verify: bool = True) -> DataBundle:
    """Build the dataset named by ``cfg.name``.

    With ``verify``, raise ``DataError`` when a listed file is missing or the labelled or
    validation set is empty (``dualteacher check`` builds without it, to report everything).
    """
    if cfg.name not in DATASETS:
        raise ConfigError(
            f"unknown dataset data.name={cfg.name!r}. Available: {', '.join(sorted(DATASETS))}"
        )
    bundle = DATASETS[cfg.name](cfg)
    if verify:
        verify_bundle(bundle, cfg)
    return bundle


def set_problems(source: SegSource | None) -> list:
    """Problems found without reading any file (missing files, masks without images)."""
    return source.file_problems() if hasattr(source, "file_problems") else []


def verify_bundle(bundle: DataBundle, cfg: DataConfig) -> None:
    """Raise ``DataError`` listing missing files and empty labelled / validation sets."""
    for what in ("labeled", "val"):
        source = getattr(bundle, what)
        if len(source) == 0:
            origin = getattr(source, "origin", "")
            hint = getattr(source, "empty_hint", "")
            raise DataError(
                f"the {what} set of data.name={cfg.name} (data.root={cfg.root}) is empty"
                + (f"; it comes from {origin}" if origin else "")
                + (f". Fix: {hint}" if hint else "")
            )
    problems = [p for s in (bundle.labeled, bundle.unlabeled, bundle.val) for p in set_problems(s)]
    if not problems and hasattr(bundle.val, "header_problems"):
        # validation files are never skipped: find what their headers tell before training
        problems = bundle.val.header_problems()
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        raise DataError(
            f"{len(problems)} problem(s) with the files of data.name={cfg.name}:\n  {shown}{more}\n"
            "`dualteacher check CONFIG` lists every problem."
        )


__all__ = ["DATASETS", "SPLIT_POOLS", "DataBundle", "SegSource", "build_data", "verify_bundle"]
