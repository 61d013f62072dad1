"""``dualteacher check``: read every file of a dataset config and report what is wrong.

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
from tqdm.auto import tqdm

from dualteacher.config import IGNORE_INDEX, Config
from dualteacher.data import build_data, sample_indices, set_problems
from dualteacher.data.base import SegSource
from dualteacher.data.files import image_key
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


def check_data(
    cfg: Config,
    workers: int | None = None,
    progress: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> CheckReport:
    """Scan the labelled, unlabelled and validation sets of ``cfg.data`` fully, or read only
    ``sample`` random samples (from ``seed``) of each larger set."""
    from dualteacher.methods import METHODS

    workers = workers or min(8, os.cpu_count() or 1)
    bundle = build_data(cfg.data, verify=False)
    k = bundle.num_classes
    names = SETS + (("select",) if bundle.select is not None else ())
    sets = [check_set(s, getattr(bundle, s), k, workers, progress, sample, seed) for s in names]
    errors, warnings = [], []
    for s in sets:
        source = getattr(bundle, s.name)
        hint = getattr(source, "empty_hint", "")
        method = METHODS.get(cfg.method.name)
        needed = s.name != "unlabeled" or (method is not None and method.uses_unlabeled)
        if s.count == 0 and needed:
            errors.append(
                f"the {s.name} set is empty (from {s.origin})" + (f": {hint}" if hint else "")
            )
        elif s.count == 0:
            warnings.append(f"the {s.name} set is empty (from {s.origin})")
        elif s.readable == 0:
            errors.append(f"no sample of the {s.name} set can be read")
    if hasattr(bundle.labeled, "entries") and hasattr(bundle.val, "entries"):
        val_images = {image_key(e.image) for e in bundle.val.entries}
        both = [e for e in bundle.labeled.entries if image_key(e.image) in val_images]
        if both:
            warnings.append(
                f"{len(both)} labelled image(s) are also validation images (e.g. {both[0].image}):"
                " validation scores will be optimistic"
            )
    for s in sets:
        warnings += _note_warnings(s)
    for s in sets:
        if s.pixels is not None and s.name == "labeled":
            absent = [c for c, n in zip(bundle.classes, s.pixels[:k]) if n == 0]
            if absent:
                warnings.append(f"classes with no labelled pixel: {', '.join(absent)}")
    return CheckReport(
        cfg.data.name, cfg.data.root, bundle.classes, sets, errors, warnings, sample, seed
    )


# What a note means for the user, by kind (see ``data.files.image_notes``).
NOTE_ADVICE = {
    "depth": (
        "have more than 8 bits per channel or are float; each is scaled to 8 bits by its own "
        "value range (values already in 0..255, or 0..1 for floats, keep their scale), the "
        "same way in training, eval and predict"
    ),
    "orientation": (
        "carry an EXIF orientation (e.g. phone photos); they are read turned as viewers show "
        "them, in training, eval and predict alike, so their masks must match the turned image"
    ),
}


def _note_warnings(s: SetReport) -> list[str]:
    out = []
    for kind, found in s.notes.items():
        where, text = found[0]
        advice = NOTE_ADVICE.get(kind, kind)
        out.append(f"{len(found)} {s.name} image(s) {advice} (e.g. {where}: {text})")
    return out


def _size(s: tuple[int, int] | None) -> str:
    return f"{s[1]}x{s[0]}" if s else "-"


def _pct(n: float, total: float) -> str:
    return f"{100 * n / total:8.2f}" if total > 0 else f"{'-':>8}"


def format_report(report: CheckReport) -> str:
    """Human-readable summary: per-set table, class pixel frequencies, every problem."""
    lines = [f"dataset {report.dataset} (data.root={report.root}), {len(report.classes)} classes"]
    lines.append("")
    lines.append(f"{'set':<10}{'images':>8}{'bad':>6}  {'smallest':>10}  {'largest':>10}  from")
    for s in report.sets:
        lines.append(
            f"{s.name:<10}{s.count:>8}{s.bad_files:>6}  {_size(s.min_size):>10}  "
            f"{_size(s.max_size):>10}  {s.origin}"
        )
    for s in report.sets:
        if s.name == "select":
            lines.append(
                f"select: {s.count} images (data.select) score the student at every validation "
                "and pick best.pt; they are in neither training set"
            )
    sampled = [s for s in report.sets if s.sampled is not None]
    if sampled:
        parts = ", ".join(f"{s.name} {s.sampled:,} of {s.count:,}" for s in sampled)
        lines.append(
            f"sampled: {parts} samples checked and read, drawn at random (--sample "
            f"{report.sample}, seed {report.seed}); the others were counted, not opened"
        )
    scored = [s for s in report.sets if s.pixels is not None]
    if scored:
        k = len(report.classes)
        ignore_label = "(ignore: % of all)"
        width = max(len(ignore_label), *(len(c) for c in report.classes)) + 1
        lines += ["", "class pixel frequencies, % of labelled (non-ignored) pixels"]
        lines.append(f"{'class':<{width}}" + "".join(f"{s.name:>10}" for s in scored))
        totals = [float(s.pixels[:k].sum()) for s in scored]
        for i, c in enumerate(report.classes):
            cells = "".join(f"  {_pct(s.pixels[i], t)}" for s, t in zip(scored, totals))
            lines.append(f"{c:<{width}}{cells}")
        ignore = "".join(f"  {_pct(s.pixels[k], float(s.pixels.sum()))}" for s in scored)
        lines.append(f"{ignore_label:<{width}}{ignore}")
    for w in report.warnings:
        lines.append(f"warning: {w}")
    problems = [(s.name, p) for s in report.sets for p in s.problems]
    if problems or report.errors:
        lines.append("")
        lines.append(f"{len(problems) + len(report.errors)} error(s):")
        lines += [f"  {e}" for e in report.errors]
        lines += [f"  [{name}] {p}" for name, p in problems]
    else:
        lines += ["", "no problems found"]
    return "\n".join(lines)


__all__ = ["CheckReport", "SetReport", "check_data", "format_report"]
