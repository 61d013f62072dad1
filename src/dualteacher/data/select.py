"""``data.select``: the selection split, the images that pick ``best.pt``.

Choosing the best checkpoint on the validation set that is then reported makes "best" the
maximum of noisy scores, an optimistic number. With ``data.select`` the periodic evaluation
also scores the student on a selection split, the checkpoint with the best selection mIoU is
``best.pt``, and "best" is the *validation* mIoU of that checkpoint.

- a fraction in (0, 1) or a count: that many labelled images (a fraction is rounded) are held
  out of the labelled training set. The draw sorts the labelled set by name and permutes it
  with ``data.select_seed`` (not ``train.seed``): every method and training seed of a
  ``compare`` selects on the same images, and trains on the same remaining ones;
- a split file (as ``data.val``: ids, image paths or ``image mask`` pairs): those images,
  taken out of the labelled and unlabelled sets; none may be a validation image.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dualteacher.config import DataConfig, parse_select
from dualteacher.data import ade20k, cityscapes, folder, voc
from dualteacher.data.base import ArraySource, DataBundle, SegSource, SubsetSource
from dualteacher.data.files import image_key
from dualteacher.data.splits import find_split_file, read_split
from dualteacher.errors import ConfigError, DataError

# The layout that reads a split file of each dataset; other datasets match names.
LAYOUTS = {
    "voc": voc.layout,
    "cityscapes": cityscapes.layout,
    "ade20k": ade20k.layout,
    "folder": folder.layout,
}
SELECT_STREAM = 0x5E1EC7  # mixed into the draw's seed: no other draw of the package uses it


def source_names(source: SegSource) -> list[str]:
    """The sample names of ``source`` without reading any image (indices as text otherwise)."""
    entries = getattr(source, "entries", None)
    if entries is not None:
        return list(entries.iter_names())
    if isinstance(source, ArraySource):
        return [source.name(i) for i in range(len(source))]
    return [f"{i:08d}" for i in range(len(source))]


def subset(source: SegSource, indices: Sequence[int], origin: str, problems: bool) -> SegSource:
    """``source`` restricted to ``indices`` (sorted), of its own class where it can be (a
    ``FileSource`` keeps its label table and checks); ``problems``: keep the listing problems
    (the labelled part keeps them, the selection part does not repeat them)."""
    if hasattr(source, "entries"):
        out = copy.copy(source)
        out.entries = source.entries.take(np.asarray(indices, np.int64))
        out.origin = origin
        out.problems = list(source.problems) if problems else []
        return out
    if isinstance(source, ArraySource):
        return source.take(indices)
    return SubsetSource(source, indices)


def draw_select(names: Sequence[str], count: int, seed: int) -> list[int]:
    """Indices (sorted) of the ``count`` samples held out for selection from a set whose
    samples are called ``names``: a permutation from ``seed`` of the set sorted by name, so the
    draw depends on which images there are, not on their order, nor on ``train.seed``."""
    order = sorted(range(len(names)), key=lambda i: (names[i], i))
    perm = np.random.default_rng([seed, SELECT_STREAM]).permutation(len(names))
    return sorted(order[i] for i in perm[:count].tolist())


def hold_out_select(bundle: DataBundle, cfg: DataConfig) -> DataBundle:
    """``bundle`` with its selection split (``bundle.select``) taken out of the training sets,
    as ``cfg.select`` asks (module docstring); unchanged when it is off."""
    kind, value = parse_select(cfg.select)
    if kind == "off" or len(bundle.labeled) == 0:  # an empty labelled set is reported later
        return bundle
    if kind == "file":
        return _from_file(bundle, cfg, value)
    n = len(bundle.labeled)
    count = value if kind == "count" else round(value * n)
    if count < 1:
        raise ConfigError(
            f"data.select={cfg.select} holds out {value:g} x {n} labelled images, which rounds "
            f"to none: give a larger fraction or a count (e.g. data.select=1)"
        )
    if count >= n:
        raise ConfigError(
            f"data.select={cfg.select} holds out {count} of the {n} labelled images and leaves "
            f"none to train on: give a smaller fraction or count (at most {n - 1}), or "
            "data.select=null"
        )
    chosen = draw_select(source_names(bundle.labeled), count, cfg.select_seed)
    rest = sorted(set(range(n)) - set(chosen))
    origin = getattr(bundle.labeled, "origin", "the labelled set")
    how = f"data.select={cfg.select}, data.select_seed={cfg.select_seed}"
    return replace(
        bundle,
        labeled=subset(bundle.labeled, rest, f"{origin} minus {count} for selection", True),
        select=subset(bundle.labeled, chosen, f"{count} of {origin} ({how})", False),
    )


def _from_file(bundle: DataBundle, cfg: DataConfig, value: str) -> DataBundle:
    """The selection split listed in the split file ``value``, out of the training sets."""
    layout = LAYOUTS.get(cfg.name)
    if layout is None or not hasattr(bundle.labeled, "entries"):
        return _from_names(bundle, cfg, value)
    table = read_split(value, cfg, layout(cfg), True, "data.select")
    taken = {image_key(p) for p in table.iter_images()}
    in_val = [p for p in bundle.val.entries.iter_images() if image_key(p) in taken]
    if in_val:
        raise DataError(
            f"data.select={value} lists {len(in_val)} validation image(s) (e.g. {in_val[0]}): "
            "the selection split must not overlap the validation set it is reported on; "
            "remove them from the file"
        )
    select = copy.copy(bundle.val)  # the dataset's own source class and label table
    select.entries, select.origin, select.problems = table, value, []
    labeled = copy.copy(bundle.labeled)
    labeled.entries = bundle.labeled.entries.drop_images(table)
    unlabeled = bundle.unlabeled
    if unlabeled is not None and hasattr(unlabeled, "entries"):
        unlabeled = copy.copy(unlabeled)
        unlabeled.entries = bundle.unlabeled.entries.drop_images(table)
    _check_left(len(labeled), len(bundle.labeled), cfg)
    return replace(bundle, labeled=labeled, unlabeled=unlabeled, select=select)


def _from_names(bundle: DataBundle, cfg: DataConfig, value: str) -> DataBundle:
    """A selection split file of sample names, for datasets without files (the demo:
    ``labeled_00003``): the named labelled samples."""
    path = find_split_file(value, cfg, "data.select")
    listed = [
        line.split()[0]
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.split() and not line.startswith("#")
    ]
    names = source_names(bundle.labeled)
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in listed if n not in index]
    if unknown or not listed:
        example = unknown[0] if unknown else "(none)"
        raise DataError(
            f"data.select={value}: {len(unknown) or 'no'} listed name(s) are not labelled "
            f"images of data.name={cfg.name} (e.g. {example}); list names such as {names[0]}"
        )
    chosen = sorted({index[n] for n in listed})
    _check_left(len(names) - len(chosen), len(names), cfg)
    rest = sorted(set(range(len(names))) - set(chosen))
    origin = getattr(bundle.labeled, "origin", "the labelled set")
    return replace(
        bundle,
        labeled=subset(bundle.labeled, rest, f"{origin} minus {len(chosen)} for selection", True),
        select=subset(bundle.labeled, chosen, value, False),
    )


def _check_left(left: int, before: int, cfg: DataConfig) -> None:
    if left == 0:
        raise ConfigError(
            f"data.select={cfg.select} takes all {before} labelled images out of training and "
            "leaves none to train on: list fewer images in it, or set data.select=null"
        )
