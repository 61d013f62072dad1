"""Datasets: a registry of builders ``DataConfig -> DataBundle`` selected by ``data.name``.

- ``demo``: generated in memory (``data.demo``);
- ``voc``, ``cityscapes``, ``ade20k``: the benchmarks as distributed, at ``data.root``;
- ``folder``: the user's own images and masks at ``data.root`` (``data/folder.py``);
- ``coco``, ``cvat``, ``labelstudio``: annotation tools' exports at ``data.root``
  (``data/annotated.py``).

``build_data`` also checks that the labelled and validation sets are not empty, that their
files exist (one ``stat`` each) and the headers of the validation files (images that are no
images, masks of another size), and that the unlabelled files exist: every one of a set of up
to ``FULL_CHECK_MAX``, else a seeded sample of ``SAMPLE_CHECK``, so a pool of millions starts
at once; ``dualteacher check`` reads every file (or ``--sample N``). Folder scans go through a
``ScanIndex`` (``data.index``, or the file the caller names: a run directory's).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dualteacher.config import DataConfig
from dualteacher.data import ade20k, annotated, cityscapes, folder, voc
from dualteacher.data.base import ArraySource, DataBundle, SegSource
from dualteacher.data.files import FileSource
from dualteacher.data.index import INDEX_NAME, ScanIndex, release_free_memory, using_index
from dualteacher.data.select import hold_out_select
from dualteacher.errors import ConfigError, DataError


def build_demo(cfg: DataConfig) -> DataBundle:
    """The built-in demo dataset, generated in memory from ``cfg.demo`` (see ``data.demo``)."""
    # Here, not at the top: data.demo loads scikit-image and SciPy (slow), only for the demo.
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
    # annotation tools' exports (data/annotated.py)
    "coco": annotated.build,
    "cvat": annotated.build,
    "labelstudio": annotated.build,
}

# (labelled candidates, other unlabelled images) of a dataset, for `dualteacher splits`; the
# annotation tools' datasets have none: their exports say which images are labelled.
SPLIT_POOLS = {
    "voc": voc.split_pool,
    "cityscapes": cityscapes.split_pool,
    "ade20k": ade20k.split_pool,
    "folder": folder.split_pool,
}

MAX_LISTED = 10  # problems shown in one error message; `dualteacher check` lists them all
FULL_CHECK_MAX = 10_000  # unlabelled sets up to this size have every file checked at start
SAMPLE_CHECK = 1_000  # files of a larger unlabelled set checked at start (seeded sample)


def build_data(
    cfg: DataConfig,
    verify: bool = True,
    *,
    index: Path | None = None,
    update_index: bool = True,
) -> DataBundle:
    """Build the dataset named by ``cfg.name``.

    With ``verify``, raise ``DataError`` when a listed file is missing or the labelled or
    validation set is empty (``dualteacher check`` builds without it, to report everything).
    Folder scans are cached in ``data.index`` if set, else in ``index`` (e.g. the run
    directory's ``data_index.npz``), else not at all; ``update_index=False`` only reads it.
    ``data.select`` holds its selection split out of the training sets (``data.select``).
    """
    if cfg.name not in DATASETS:
        raise ConfigError(
            f"unknown dataset data.name={cfg.name!r}. Available: {', '.join(sorted(DATASETS))}"
        )
    path = Path(cfg.index).expanduser() if cfg.index else index
    with using_index(ScanIndex(path, rescan=cfg.rescan, update=update_index)):
        bundle = DATASETS[cfg.name](cfg)
    release_free_memory()
    bundle = hold_out_select(bundle, cfg)  # data.select: out of the training sets
    for source in (bundle.labeled, bundle.unlabeled, bundle.val, bundle.select):
        if isinstance(source, FileSource):  # every image and mask read obeys the one limit
            source.max_pixels = cfg.max_image_pixels
    if verify:
        verify_bundle(bundle, cfg)
    return bundle


def run_index(run_dir: Path | str) -> Path:
    """The scan index of a run directory."""
    return Path(run_dir) / INDEX_NAME


def set_problems(source: SegSource | None, indices=None) -> list:
    """Problems found without reading any file (missing files, masks without images), of the
    samples ``indices`` (None: all)."""
    return source.file_problems(indices) if hasattr(source, "file_problems") else []


def sample_indices(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct indices of ``0..n-1`` drawn from ``seed``, sorted (all if n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def verify_bundle(bundle: DataBundle, cfg: DataConfig) -> None:
    """Raise ``DataError`` listing missing files and empty labelled / validation sets.

    Unlabelled files are checked all, or a sample of ``SAMPLE_CHECK`` past ``FULL_CHECK_MAX``;
    with ``data.skip_bad=true`` missing ones are a warning (training skips them when it reads
    them), unless every checked file is missing."""
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
    scored = [s for s in (bundle.val, bundle.select) if s is not None]  # never skipped
    problems = [p for s in (bundle.labeled, *scored) for p in set_problems(s)]
    unl = bundle.unlabeled
    if unl is not None and len(unl):
        n = len(unl)
        checked = sample_indices(n, n if n <= FULL_CHECK_MAX else SAMPLE_CHECK).tolist()
        missing = set_problems(unl, checked)
        sampled = f" (a random sample of {len(checked)} of {n:,})" if len(checked) < n else ""
        if missing and cfg.skip_bad and len(missing) < len(checked):
            print(
                f"warning: {len(missing)} of {len(checked)} unlabelled files checked{sampled} "
                f"are missing, e.g. {missing[0].path}; data.skip_bad=true skips them when read",
                file=sys.stderr,
            )
        else:
            problems += missing
    if not problems:
        # validation (and selection) files are never skipped: find what their headers and
        # masks tell before training
        problems = [p for s in scored if hasattr(s, "start_problems") for p in s.start_problems()]
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        raise DataError(
            f"{len(problems)} problem(s) with the files of data.name={cfg.name}:\n  {shown}{more}\n"
            "`dualteacher check CONFIG` lists every problem."
        )


__all__ = [
    "DATASETS",
    "SPLIT_POOLS",
    "DataBundle",
    "SegSource",
    "build_data",
    "run_index",
    "verify_bundle",
]
