"""The report of ``dualteacher check CONFIG``: read every file of a dataset config and say what
is wrong.

For the labelled, unlabelled and validation sets: the number of images, image sizes, every
file that is missing, unreadable or corrupt, every mask of the wrong size or with label values
that are not classes, and the class pixel frequencies of the labelled and validation masks.
Images of more than 8 bits per channel and images with an EXIF orientation are counted in a
warning (they are read scaled / turned, see ``data.files.decode_image``).
Reading uses the same ``load`` as training (``data.check.check_set``), so a config that checks
clean trains without data errors. With ``sample=N`` (``--sample N``), a set of more than N
entries is counted in full but only N of its samples, drawn at random from ``seed``, are
checked and read. Whether an empty unlabelled set is an error depends on the method
(``methods.METHODS``): that is why the report is put together on this floor, not in
``data``.
"""

from __future__ import annotations

import os

from dualteacher.config import ClassWeights, Config, StrongAugConfig
from dualteacher.data import build_data
from dualteacher.data.check import SETS, CheckReport, SetReport, check_set
from dualteacher.data.files import image_key
from dualteacher.data.transforms import COLOUR_CUE, colour_is_cue, strong_for_colour
from dualteacher.methods import METHODS

# A class below this share of the labelled pixels gets the class-weights hint: on the gain
# suite's scratches (0.7 % defect pixels) no method predicted the class without weights.
RARE_SHARE = 0.02


def check_data(
    cfg: Config,
    workers: int | None = None,
    progress: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> CheckReport:
    """Scan the labelled, unlabelled and validation sets of ``cfg.data`` fully, or read only
    ``sample`` random samples (from ``seed``) of each larger set."""
    workers = workers or min(8, os.cpu_count() or 1)
    bundle = build_data(cfg.data, verify=False)
    k = bundle.num_classes
    names = SETS + (("select",) if bundle.select is not None else ())
    sets = [
        check_set(s, getattr(bundle, s), k, workers, progress, sample, seed, s == "labeled")
        for s in names
    ]
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
            total = float(s.pixels[:k].sum())
            rare = [
                f"{c} ({100 * n / total:.2g} %)"
                for c, n in zip(bundle.classes, s.pixels[:k])
                if 0 < n < RARE_SHARE * total
            ]
            if rare and cfg.method.class_weights == ClassWeights.none:
                warnings.append(
                    f"classes under {100 * RARE_SHARE:.0f} % of the labelled pixels: "
                    f"{', '.join(rare)}; plain cross-entropy tends never to predict such a "
                    "class: method.class_weights=sqrt_inverse weighs it up (docs/methods.md)"
                )
    stats = sets[0].stats if sets[0].readable else None  # None: the labelled set was sampled
    colour = stats.colour_separability() if stats is not None else None
    hint = stats.crop_warning(cfg.data.crop_size, bundle.classes) if stats is not None else None
    warnings += [hint] if hint else []
    return CheckReport(
        cfg.data.name, cfg.data.root, bundle.classes, sets, errors, warnings, sample, seed, colour
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
    "mode": (
        "are not plain RGB (alpha, grey, palette or CMYK); they are converted to RGB, an alpha "
        "channel dropped (transparent pixels keep their stored colour), the same way in "
        "training, eval and predict"
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
        # the counts too: a share hides how few pixels a rare class has (a tool's export
        # with one small object of a class reads as 0.01 %)
        lines += ["", "class pixel counts"]
        lines.append(f"{'class':<{width}}" + "".join(f"{s.name:>14}" for s in scored))
        for i, c in enumerate([*report.classes, "(ignore)"]):
            lines.append(f"{c:<{width}}" + "".join(f"{int(s.pixels[i]):>14,}" for s in scored))
    if report.colour_separability is not None:
        score = report.colour_separability
        strong = strong_for_colour(StrongAugConfig(), score)  # the view `auto` resolves to
        view = (
            "keeps colour (hue 0, no greyscale)"
            if colour_is_cue(score)
            else f"varies it (hue {strong.hue}, greyscale {strong.grayscale_p})"
        )
        lines += [
            "",
            f"colour separates the labelled classes at {score:.2f} (0: chance, 1: perfectly; "
            f"a class cue from {COLOUR_CUE}): data.strong.colour=auto's strong view {view}",
        ]
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


__all__ = ["check_data", "format_report"]
