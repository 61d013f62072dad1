"""Reading every file of a dataset's sets and recording what is wrong (``check_set``); the
``dualteacher check`` command (``commands.check``) runs it on each set and reports.

For the labelled, unlabelled and validation sets: the number of images, image sizes, every
file that is missing, unreadable or corrupt, every mask of the wrong size or with label values
that are not classes, and the class pixel frequencies of the labelled and validation masks.
Images of more than 8 bits per channel and images with an EXIF orientation are counted in a
warning (they are read scaled / turned, see ``data.files.decode_image``).
Reading uses the same ``load`` as training, so a config that checks clean trains without data
errors. With ``sample=N`` (``--sample N``), a set of more than N entries is counted in full but
only N of its samples, drawn at random from ``seed``, are checked and read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from dualteacher.config import IGNORE_INDEX
from dualteacher.data import sample_indices, set_problems
from dualteacher.data.base import SegSource
from dualteacher.errors import BadSampleError

SETS = ("labeled", "unlabeled", "val")  # and "select" when data.select holds one out


@dataclass
class SetReport:
    name: str  # labeled | unlabeled | val | select
    origin: str  # where the set comes from (split file, folder, default list)
    count: int  # samples listed
    readable: int = 0  # samples that loaded without a problem
    problems: list[BadSampleError] = field(default_factory=list)  # one per bad file
    pixels: np.ndarray | None = None  # (K + 1,) labelled pixels per class, ignore last
    min_size: tuple[int, int] | None = None  # (H, W) of the smallest image (by area)
    max_size: tuple[int, int] | None = None
    sampled: int | None = None  # samples read when only a random sample was (--sample)
    # what reading did beyond plain 8-bit RGB, by kind ("depth", "orientation"): (file, text)
    notes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def bad_files(self) -> int:
        return len(self.problems)


@dataclass
class CheckReport:
    dataset: str
    root: str | None
    classes: list[str]
    sets: list[SetReport]
    errors: list[str]  # set-level errors (an empty set a training run needs)
    warnings: list[str]
    sample: int | None = None  # --sample N: at most N samples read per set
    seed: int = 0
    # how well colour alone separates the labelled classes (``colour_separability``); None
    # when the labelled set was not read whole
    colour_separability: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not any(s.problems for s in self.sets)


def _scan_one(source: SegSource, index: int, num_classes: int):
    """(image size, per-class pixel counts or None, problem or None, notes) of one sample."""
    try:
        sample = source.load(index)
    except BadSampleError as e:
        return None, None, e, ()
    counts = None
    if sample.mask is not None:
        hist = np.bincount(np.asarray(sample.mask, np.int64).ravel(), minlength=256)
        counts = np.append(hist[:num_classes], hist[IGNORE_INDEX])
    entries = getattr(source, "entries", None)
    where = str(entries[index].image) if entries is not None else sample.name
    return sample.image.shape[:2], counts, None, [(k, where, text) for k, text in sample.notes]


def _map_in_chunks(pool: ThreadPoolExecutor, fn, items: Sequence[int], chunk: int = 1024):
    """``pool.map(fn, items)`` in order, submitting ``chunk`` items at a time (``map`` alone
    would create a future for each of millions of items before the first result)."""
    for a in range(0, len(items), chunk):
        yield from pool.map(fn, items[a : a + chunk])


def check_set(
    name: str,
    source: SegSource | None,
    num_classes: int,
    workers: int,
    progress: bool,
    sample: int | None = None,
    seed: int = 0,
) -> SetReport:
    """Read every sample of ``source``, or ``sample`` of them drawn from ``seed`` (threads: PIL
    decoding releases the GIL)."""
    if source is None:
        return SetReport(name, "none", 0)
    report = SetReport(name, getattr(source, "origin", "in memory"), len(source))
    indices = range(len(source))
    if sample is not None and len(source) > sample:
        indices = sample_indices(len(source), sample, seed).tolist()
        report.sampled = len(indices)
    seen: set[str] = set()
    for p in set_problems(source, indices):
        if str(p.path) not in seen:
            seen.add(str(p.path))
            report.problems.append(p)

    def area(size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        return size[0] * size[1], size

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = _map_in_chunks(pool, lambda i: _scan_one(source, i, num_classes), indices)
        for size, counts, problem, notes in tqdm(
            results, total=len(indices), desc=name, disable=not progress, leave=False
        ):
            for kind, where, text in notes:
                report.notes.setdefault(kind, []).append((where, text))
            if problem is not None:
                if str(problem.path) not in seen:
                    seen.add(str(problem.path))
                    report.problems.append(problem)
                continue
            report.readable += 1
            if report.min_size is None or area(size) < area(report.min_size):
                report.min_size = size
            if report.max_size is None or area(size) > area(report.max_size):
                report.max_size = size
            if counts is not None:
                report.pixels = counts if report.pixels is None else report.pixels + counts
    return report


def class_pixel_counts(source: SegSource, num_classes: int) -> np.ndarray:
    """(K,) int64: how many pixels of each class the masks of ``source`` hold (ignore and
    out-of-range ids not counted), read as ``check_set`` reads them (``_scan_one``, threads).
    A sample that cannot be read is left out here: training meets it and reports it as it
    does any bad sample (``data.skip_bad``)."""
    counts = np.zeros(num_classes, np.int64)
    for _, sample_counts, _, _ in _map_samples(source, lambda i: _scan_one(source, i, num_classes)):
        if sample_counts is not None:  # (K + 1,): the classes, then ignore
            counts += sample_counts[:num_classes]
    return counts


def _map_samples(source: SegSource, fn):
    """``fn(i)`` for every sample index of ``source``, in order, read by a thread pool (PIL
    decoding releases the GIL), as a list."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(_map_in_chunks(pool, fn, range(len(source))))


def _chromaticity(index: int, source: SegSource, num_classes: int, per_image: int):
    """(N, 2) chromaticity ``(R, G) / (R + G + B)`` and (N,) class of up to ``per_image``
    labelled pixels of one sample (an even stride over its valid pixels); None if unreadable."""
    try:
        sample = source.load(index)
    except BadSampleError:
        return None
    if sample.mask is None:
        return None
    mask = np.asarray(sample.mask, np.int64).ravel()  # (H W,)
    rgb = np.asarray(sample.image, np.float64).reshape(-1, 3)  # (H W, 3)
    keep = np.flatnonzero(mask < num_classes)
    keep = keep[:: max(1, len(keep) // per_image)]
    total = rgb[keep].sum(1, keepdims=True) + 1.0  # +1: black pixels are grey, not undefined
    return (rgb[keep, :2] + 1.0 / 3) / total, mask[keep]


def colour_separability(source: SegSource, num_classes: int, per_image: int = 4096) -> float:
    """How well colour alone, without brightness, tells the classes of ``source``'s masks
    apart: 0 = chance, 1 = perfectly. Each labelled pixel's chromaticity ``(R, G) / (R + G +
    B)`` is classified by a per-class Gaussian (diagonal, equal priors) fitted on the same
    pixels; the score is the balanced accuracy (mean recall over the classes present) rescaled
    so that chance (1 / classes present) is 0. Greyscale images score 0 (every pixel is
    (1/3, 1/3)). Unreadable samples are left out (training reports them)."""
    parts = _map_samples(source, lambda i: _chromaticity(i, source, num_classes, per_image))
    parts = [p for p in parts if p is not None]
    if not parts:
        return 0.0
    chroma = np.concatenate([p[0] for p in parts])  # (N, 2)
    labels = np.concatenate([p[1] for p in parts])  # (N,)
    present = np.unique(labels)
    if len(present) < 2:
        return 0.0
    # (C, 2) mean and variance per present class; 1e-5: a flat class keeps a finite density
    mean = np.stack([chroma[labels == c].mean(0) for c in present])
    var = np.stack([chroma[labels == c].var(0) for c in present]) + 1e-5
    loglik = -0.5 * (((chroma[:, None] - mean) ** 2) / var + np.log(var)).sum(-1)  # (N, C)
    predicted = present[loglik.argmax(1)]
    recall = np.mean([np.mean(predicted[labels == c] == c) for c in present])
    chance = 1.0 / len(present)
    return float(max(0.0, (recall - chance) / (1.0 - chance)))


def _extents(index: int, source: SegSource, num_classes: int, skip: int) -> list[int]:
    """The extents (max of bounding-box height and width, px) of the connected regions of
    every class but ``skip`` in one sample's mask; [] if unreadable or unlabelled."""
    try:
        sample = source.load(index)
    except BadSampleError:
        return []
    if sample.mask is None:
        return []
    mask = np.asarray(sample.mask)  # (H, W) class ids
    out = []
    for c in np.unique(mask):
        if c == skip or c >= num_classes:
            continue
        regions, _ = ndimage.label(mask == c)  # 4-connected regions of class c
        for box in ndimage.find_objects(regions):
            out.append(max(box[0].stop - box[0].start, box[1].stop - box[1].start))
    return out


def object_extents(source: SegSource, num_classes: int, skip: int) -> np.ndarray:
    """(N,) int: the extent in pixels (the longer side of the bounding box) of every connected
    region of one class in ``source``'s masks, the class ``skip`` left out (the most common
    one: a background spans the image and says nothing of object size). A crop smaller than
    a region shows a training step only part of it, which is enough for texture and colour
    but not for classes told apart by their outline (docs/gain.md, "Crop")."""
    parts = _map_samples(source, lambda i: _extents(i, source, num_classes, skip))
    return np.array([e for p in parts for e in p], np.int64)


__all__ = [
    "SETS",
    "CheckReport",
    "SetReport",
    "check_set",
    "class_pixel_counts",
    "colour_separability",
    "object_extents",
]
