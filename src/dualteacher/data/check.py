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
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from dualteacher.config import IGNORE_INDEX
from dualteacher.data import sample_indices, set_problems
from dualteacher.data.base import SegSource
from dualteacher.errors import BadSampleError

SETS = ("labeled", "unlabeled", "val")  # and "select" when data.select holds one out
# Labelled pixels per sample whose colour ``LabelledStats.colour_separability`` reads (an even
# stride): enough for a stable score, little memory for thousands of masks.
CHROMA_PER_IMAGE = 4096
# The crop warning fires when the labelled objects' median extent is more than this share of
# the training crop (and the images are larger than it): a random crop of side C shows an
# object of extent e whole in about ((C - e) / (C + e))^2 of the crops that show any of it,
# 1/9 at e = C / 2. On the gain suite's shapes at 128 px (median 50 px) 64 px crops left
# supervised 6 mIoU below whole images and Dual Teacher's gain at +0.4 (+16 on whole images);
# small objects in 160 px images (median 15 px) trained well on 64 px crops (docs/gain.md).
CROP_MEDIAN = 0.5


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
    stats: LabelledStats | None = None  # check_set(stats=True) on a set read whole

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


class _Read(NamedTuple):
    """What reading one sample gave (``_scan_one``)."""

    size: tuple[int, int] | None  # (H, W) of the image; None when unreadable
    counts: np.ndarray | None  # (K + 1,) pixels per class, ignore last; None: no mask
    problem: BadSampleError | None
    notes: list[tuple[str, str, str]]  # (kind, file, text)
    chroma: tuple[np.ndarray, np.ndarray] | None = None  # (N, 2) chromaticity, (N,) class
    regions: np.ndarray | None = None  # (M, 2) class id, extent in px of each region


def _scan_one(source: SegSource, index: int, num_classes: int, per_image: int = 0) -> _Read:
    """Read one sample. ``per_image`` > 0 (the labelled set for ``LabelledStats``): also the
    chromaticity of up to ``per_image`` of its labelled pixels and the extent of each connected
    region of its mask, from the same read."""
    try:
        sample = source.load(index)
    except BadSampleError as e:
        return _Read(None, None, e, [])
    counts = chroma = regions = None
    if sample.mask is not None:
        mask = np.asarray(sample.mask, np.int64)  # (H, W) class ids
        hist = np.bincount(mask.ravel(), minlength=256)
        counts = np.append(hist[:num_classes], hist[IGNORE_INDEX])
        if per_image > 0:
            chroma = _chromaticity(np.asarray(sample.image), mask, num_classes, per_image)
            regions = _regions(mask, num_classes)
    entries = getattr(source, "entries", None)
    where = str(entries[index].image) if entries is not None else sample.name
    notes = [(k, where, text) for k, text in sample.notes]
    return _Read(sample.image.shape[:2], counts, None, notes, chroma, regions)


def _chromaticity(image: np.ndarray, mask: np.ndarray, num_classes: int, per_image: int):
    """(N, 2) chromaticity ``(R, G) / (R + G + B)`` and (N,) class of up to ``per_image``
    labelled pixels of one sample (an even stride over its valid pixels)."""
    labels = mask.ravel()  # (H W,)
    rgb = image.astype(np.float64).reshape(-1, 3)  # (H W, 3)
    keep = np.flatnonzero(labels < num_classes)
    keep = keep[:: max(1, len(keep) // per_image)]
    total = rgb[keep].sum(1, keepdims=True) + 1.0  # +1: black pixels are grey, not undefined
    return (rgb[keep, :2] + 1.0 / 3) / total, labels[keep]


def _regions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(M, 2) int64: class id and extent (the longer side of the bounding box, px) of every
    4-connected region of each class in one (H, W) mask; ignore and out-of-range ids left out."""
    out = []
    for c in np.unique(mask):
        if c >= num_classes:
            continue
        labelled, _ = ndimage.label(mask == c)
        for box in ndimage.find_objects(labelled):
            out.append((c, max(box[0].stop - box[0].start, box[1].stop - box[1].start)))
    return np.array(out, np.int64).reshape(-1, 2)


@dataclass
class LabelledStats:
    """What one read of the labelled set measures for training's data-driven settings: class
    pixel counts (``method.class_weights``), how well colour separates the classes
    (``data.strong.colour: auto``) and the size of the labelled objects against the crop
    (``crop_warning``). Unreadable samples are left out (training reports them)."""

    pixels: np.ndarray  # (K,) int64 labelled pixels per class (ignore not counted)
    chroma: np.ndarray  # (N, 2) chromaticity of a stride of each sample's labelled pixels
    chroma_class: np.ndarray  # (N,) their class ids
    regions: np.ndarray  # (M, 2) class id, extent in px of every connected region
    max_side: int  # the longest image side read

    @classmethod
    def of(cls, reads: list[_Read], num_classes: int) -> LabelledStats:
        reads = [r for r in reads if r.counts is not None and r.chroma is not None]
        pixels = np.zeros(num_classes, np.int64)
        for r in reads:
            pixels += r.counts[:num_classes]  # (K + 1,): the classes, then ignore
        return cls(
            pixels,
            np.concatenate([r.chroma[0] for r in reads]) if reads else np.zeros((0, 2)),
            np.concatenate([r.chroma[1] for r in reads]) if reads else np.zeros(0, np.int64),
            np.concatenate([r.regions for r in reads]) if reads else np.zeros((0, 2), np.int64),
            max((max(r.size) for r in reads), default=0),
        )

    def colour_separability(self) -> float:
        """How well colour alone, without brightness, tells the labelled classes apart: 0 =
        chance, 1 = perfectly. Each pixel's chromaticity is classified by a per-class Gaussian
        (diagonal, equal priors) fitted on the same pixels; the score is the balanced accuracy
        (mean recall over the classes present) rescaled so that chance (1 / classes present)
        is 0. Greyscale images score 0 (every pixel is (1/3, 1/3))."""
        chroma, labels = self.chroma, self.chroma_class
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

    def object_extents(self, skip: int) -> np.ndarray:
        """(N,) int: the extent of every region of each class but ``skip`` (the most common
        one: a background spans the image and says nothing of object size)."""
        return self.regions[self.regions[:, 0] != skip, 1]

    def crop_warning(self, crop: int, classes: list[str]) -> str | None:
        """A warning when most labelled objects are too large for a ``crop`` px training crop
        to show them whole, or None. A step then sees them in part, which is enough where
        texture or colour tells the classes apart but not where their outline does."""
        if self.max_side <= crop:  # the crop holds whole images (padded where smaller)
            return None
        skip = int(np.argmax(self.pixels))  # the most common class: a background
        extents = self.object_extents(skip)
        if len(extents) == 0:
            return None
        median = float(np.median(extents))
        if median <= CROP_MEDIAN * crop:
            return None
        side = self.max_side
        suggest = -(-min(int(2 * median), side) // 32) * 32  # rounded up to a multiple of 32
        return (
            f"half of the labelled objects (connected regions of each class but "
            f"{classes[skip]}, the most common) are over {median:.0f} px wide or tall, more "
            f"than half the training crop (data.crop_size={crop}): most steps see them cut by "
            "the crop, enough where texture or colour tells the classes apart, not where their "
            f"outline does. data.crop_size={suggest} shows most of them whole (the images are "
            f"up to {side} px), at more time per step (docs/gain.md, Crop)"
        )


def labelled_stats(
    source: SegSource, num_classes: int, per_image: int = CHROMA_PER_IMAGE
) -> LabelledStats:
    """Read every sample of ``source`` once (threads) for its ``LabelledStats``."""
    reads = _map_samples(source, lambda i: _scan_one(source, i, num_classes, per_image))
    return LabelledStats.of(reads, num_classes)


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
    stats: bool = False,
) -> SetReport:
    """Read every sample of ``source``, or ``sample`` of them drawn from ``seed`` (threads: PIL
    decoding releases the GIL). ``stats`` (the labelled set): the same read also gives the
    set's ``LabelledStats``, kept in ``report.stats`` when every sample was read."""
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
        per_image = CHROMA_PER_IMAGE if stats and report.sampled is None else 0
        reads = []  # kept for LabelledStats only
        results = _map_in_chunks(
            pool, lambda i: _scan_one(source, i, num_classes, per_image), indices
        )
        for read in tqdm(results, total=len(indices), desc=name, disable=not progress, leave=False):
            size, counts, problem, notes = read[:4]
            if per_image:
                reads.append(read)
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
    if per_image:
        report.stats = LabelledStats.of(reads, num_classes)
    return report


def _map_samples(source: SegSource, fn):
    """``fn(i)`` for every sample index of ``source``, in order, read by a thread pool (PIL
    decoding releases the GIL), as a list."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(_map_in_chunks(pool, fn, range(len(source))))


__all__ = [
    "CROP_MEDIAN",
    "SETS",
    "CheckReport",
    "LabelledStats",
    "SetReport",
    "check_set",
    "labelled_stats",
]
