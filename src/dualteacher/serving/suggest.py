"""``dualteacher suggest CHECKPOINT --top K --out DIR``: which unlabelled images to label next.

Every unlabelled image (the checkpoint's own unlabelled set, rebuilt from its stored config
and the overrides, or the files given with ``images``) is predicted by the checkpoint's models
(``serving.segmenter``: the checkpoint's ``eval`` settings; images and batches by
``serving.inputs``, as ``pseudolabel`` reads them) and scored, each
score a mean over the image's pixels:

- ``disagreement``: share of pixels where the two models of the pair predict different classes;
- ``sym_kl``: symmetric KL divergence of their softmax, (KL(p_a||p_b) + KL(p_b||p_a)) / 2;
- ``uncertainty``: 1 - the student's top softmax probability;
- ``rarity``: r(c) of the student's predicted class c, r(c) = log(f_max / f_c) /
  log(f_max / f_min), f the pixel frequencies of the classes in the labelled set (floored at
  1e-4): 0 for the most common class, 1 for the rarest (or a class never labelled).

The ranking score is::

    combined = (w_d R(sym_kl) + w_u R(uncertainty) + w_r R(rarity)) / (w_d + w_u + w_r)

R(s) is the percentile rank of an image's score among all scored images (0 the lowest, 1 the
highest; tied scores share their mean rank) and ``(w_d, w_u, w_r)`` are ``weights`` (default
1, 1, 1). Images are ranked by ``combined``, highest first, ties broken by name.

The pair: Dual Teacher's ``teacher_a`` and ``teacher_b``. A method with one teacher
(``mean_teacher``, ``fixmatch`` with ``ema_teacher``) pairs the student with it. A single model
(``supervised``, ``fixmatch``, ``unimatch``) has no pair: ``disagreement`` and ``sym_kl`` stay
empty and ``combined`` is the weighted rank of uncertainty and rarity alone.

Where the labelled set cannot be read (``images`` given and the checkpoint's data not on this
machine), rarity uses the class frequencies of the student's predictions on the scored images
instead; ``suggest.json`` says which.

Written to DIR: ``ranking.csv`` (rank, name, path, every score, combined; every image once),
``top.txt`` (the top K paths, or names for generated images), ``contact_sheet.png`` (the top
K, at most ``MAX_SHEET_ROWS``: image and each model's prediction) and ``suggest.json``; with
``fmt``, the top K with the student's masks and their combined score as pre-annotations for
an annotation tool (``serving.tool_export``: ``coco.json``, ``cvat.zip``, ``labelstudio.json``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from tqdm.auto import tqdm

from dualteacher.data import build_data
from dualteacher.errors import (
    BadSampleError,
    CheckpointError,
    ConfigError,
    DataError,
    DualTeacherError,
)
from dualteacher.outputs import write_json, write_text, writes_under
from dualteacher.plots import label_colors, plot_samples
from dualteacher.serving.inputs import (
    IMAGE_EXTENSIONS,
    OUTPUTS_MANIFEST,
    ImageSet,
    logit_batches,
    record_outputs,
)
from dualteacher.serving.segmenter import Segmenter, load_segmenter
from dualteacher.serving.tool_export import FORMATS, ToolExport, export_name

FORMULA = (
    "combined = (w_d R(sym_kl) + w_u R(uncertainty) + w_r R(rarity)) / (w_d + w_u + w_r), "
    "R = percentile rank among the scored images (0 lowest, 1 highest); without two models "
    "the sym_kl term is left out"
)
SCORES = ("disagreement", "sym_kl", "uncertainty", "rarity")
CSV_COLUMNS = ("rank", "name", "path", *SCORES, "combined")
MAX_SHEET_ROWS = 50  # a taller figure is no longer one picture; the CSV lists every image
MIN_FREQUENCY = 1e-4  # floor of a class's labelled pixel frequency (unlabelled classes)


# ------------------------------------------------------------------------------ the scores
def scoring_models(available: Sequence[str]) -> tuple[tuple[str, str] | None, str]:
    """(the pair of models whose disagreement is scored, or None; the student)."""
    if "teacher_a" in available and "teacher_b" in available:
        return ("teacher_a", "teacher_b"), "student"
    if "teacher" in available:
        return ("student", "teacher"), "student"
    return None, "student"


@torch.no_grad()
def image_scores(
    logits: dict[str, torch.Tensor], pair: tuple[str, str] | None, student: str = "student"
) -> dict[str, np.ndarray]:
    """Per-image scores of a batch: ``uncertainty``, ``fractions`` (B, K) (share of pixels the
    student predicts as each class) and, with a pair, ``disagreement`` and ``sym_kl``; each a
    mean over the pixels. ``logits``: model name -> (B, K, H, W)."""
    logp = F.log_softmax(logits[student].float(), 1)  # (B, K, H, W)
    conf, pred = logp.max(1)  # (B, H, W)
    b, k = logp.shape[:2]
    offsets = torch.arange(b, device=pred.device)[:, None] * k
    counts = torch.bincount((pred.flatten(1) + offsets).flatten(), minlength=b * k)
    out = {
        "uncertainty": (1 - conf.exp()).flatten(1).mean(1),
        "fractions": counts.view(b, k).float() / pred[0].numel(),
    }
    if pair is not None:
        la, lb = (F.log_softmax(logits[n].float(), 1) for n in pair)
        out["disagreement"] = (la.argmax(1) != lb.argmax(1)).float().flatten(1).mean(1)
        # (KL(a||b) + KL(b||a)) / 2 = sum_c (p_a - p_b)(log p_a - log p_b) / 2, finite from logits
        out["sym_kl"] = (0.5 * ((la.exp() - lb.exp()) * (la - lb)).sum(1)).flatten(1).mean(1)
    return {n: v.cpu().numpy().astype(np.float64) for n, v in out.items()}


def rarity_weights(frequencies: np.ndarray) -> np.ndarray:
    """(K,) r(c) = log(f_max / f_c) / log(f_max / f_min) in [0, 1] from class pixel
    frequencies (any scale; floored at ``MIN_FREQUENCY`` after normalising). All equal: 0."""
    f = np.asarray(frequencies, dtype=np.float64)
    f = np.maximum(f / f.sum() if f.sum() > 0 else np.ones_like(f), MIN_FREQUENCY)
    span = math.log(f.max() / f.min())
    return np.log(f.max() / f) / span if span > 0 else np.zeros_like(f)


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Rank of each value among ``values`` scaled to [0, 1] (0 lowest, 1 highest); tied values
    share their mean rank. One value: 0."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.zeros(len(values))
    return (rankdata(values, method="average") - 1) / (len(values) - 1)


def combined_score(scores: dict[str, np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``FORMULA``: weighted mean of the percentile ranks of sym_kl (when scored),
    uncertainty and rarity."""
    w_d, w_u, w_r = weights
    terms = [(w_u, scores["uncertainty"]), (w_r, scores["rarity"])]
    if "sym_kl" in scores:
        terms.insert(0, (w_d, scores["sym_kl"]))
    total = sum(w for w, _ in terms)
    # Rounded: equal sums of ranks can differ in the last bits with the order of the additions,
    # and a tie must stay a tie (broken by name).
    return np.round(sum(w * percentile_rank(v) for w, v in terms) / total, 9)


def ranking_order(names: Sequence[str], combined: np.ndarray) -> list[int]:
    """Indices by ``combined``, highest first; ties by name."""
    return sorted(range(len(names)), key=lambda i: (-combined[i], names[i]))


def labeled_frequencies(source, num_classes: int, progress: bool = True) -> tuple[np.ndarray, int]:
    """(pixel count of each class over the masks of ``source``, number of masks read);
    unreadable samples are left out (``dualteacher check`` lists them)."""
    counts = np.zeros(num_classes, np.float64)
    read = 0
    for i in tqdm(range(len(source)), desc="labelled masks", disable=not progress):
        try:
            mask = source.load(i).mask
        except BadSampleError:
            continue
        if mask is None:
            continue
        ids = np.asarray(mask).ravel()
        counts += np.bincount(ids[ids < num_classes], minlength=num_classes)[:num_classes]
        read += 1
    return counts, read


# ------------------------------------------------------------------------------ suggest
@dataclass
class SuggestResult:
    rows: list[dict]  # ranked, one per image: the columns of ranking.csv (CSV_COLUMNS)
    pair: tuple[str, str] | None  # the models whose disagreement was scored
    rarity_reference: str  # where the class frequencies of ``rarity`` come from
    out_dir: Path
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason): not ranked
    skipped: list[Path] = field(default_factory=list)  # non-image files in input folders
    top_k: int = 0  # rows in top.txt: min(top, ranked images)
    sheet: list[dict] = field(default_factory=list)  # the contact sheet's rows, as drawn
    export: Path | None = None  # the pre-annotations for an annotation tool (--format)

    @property
    def top(self) -> list[dict]:
        return self.rows[: self.top_k]


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    w = tuple(float(x) for x in weights)
    if len(w) != 3 or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w[1:]) + w[0] <= 0:
        raise ConfigError(
            f"weights={','.join(str(x) for x in weights)}: give three non-negative numbers "
            "w_d,w_u,w_r (disagreement, uncertainty, rarity), not all 0, e.g. 1,1,1"
        )
    return w[0], w[1], w[2]


def _build_data(cfg):
    return build_data(cfg.data, verify=False)


@writes_under("out_dir")
def suggest(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    top: int = 20,
    images: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    device: str | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = True,
    fmt: str | None = None,
    image_prefix: str = "",
) -> SuggestResult:
    """Rank unlabelled images for labelling; see the module docstring.

    Args:
        top: how many of the best-ranked images go to ``top.txt`` and the contact sheet.
        images: image files, folders or globs (as ``predict`` takes them) to rank; None: the
            unlabelled set of the checkpoint's config (with ``overrides``, e.g. ``data.root``).
        overrides: ``key=value`` changes of the stored config.
        weights: ``(w_d, w_u, w_r)`` of the combined score.
        fmt: also write the top images with the student's masks as pre-annotations for an
            annotation tool, ``coco``, ``cvat`` or ``labelstudio`` (``serving.tool_export``),
            each image named ``image_prefix`` + its relative name.
    """
    if top < 1:
        raise ConfigError(f"--top {top}: give the number of images to suggest, at least 1")
    w = _check_weights(weights)
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if images is not None:
        image_set, failed, skipped = ImageSet.from_inputs(images, out_dir)
        if len(image_set) == 0:
            reasons = "; ".join(f"{a}: {r}" for a, r in failed) or "no image files"
            raise DataError(
                f"--images {' '.join(images)}: nothing to rank ({reasons}). Give image files "
                f"({' '.join(sorted(IMAGE_EXTENSIONS))}), folders holding them, or globs"
            )
    every = load_segmenter(checkpoint, overrides, "all", device)
    classes = every.classes
    num_classes = len(classes)
    pair, student = scoring_models(list(every.models))
    names_needed = dict.fromkeys([*(pair or ()), student])
    trained = replace(every, models={n: every.models[n] for n in names_needed})

    bundle, data_problem = None, ""
    try:
        bundle = _build_data(trained.cfg)
        if bundle.num_classes != num_classes:
            raise CheckpointError(
                f"{checkpoint} has {num_classes} classes but data.name={trained.cfg.data.name} "
                f"has {bundle.num_classes}: give the data the checkpoint was trained on"
            )
    except DualTeacherError as e:
        if images is None:
            raise DataError(
                f"cannot rebuild the unlabelled set of {checkpoint}: {e} (or rank image files "
                "with --images DIR)"
            ) from None
        bundle, data_problem = None, str(e)
    if images is None:
        assert bundle is not None
        source = bundle.unlabeled
        if source is None or len(source) == 0:
            cfg_data = trained.cfg.data
            raise DataError(
                f"{checkpoint}: the unlabelled set of its config (data.name={cfg_data.name}, "
                f"data.root={cfg_data.root}) is empty: give the images to rank with --images "
                "DIR, or an unlabelled split with data.unlabeled=FILE"
            )
        image_set, failed, skipped = ImageSet.from_source(source), [], []
    if fmt is not None and len(image_set):
        export_name(image_set.refs[0], image_prefix)  # generated images: refused before work

    reference = ""
    frequencies = None
    if bundle is not None and len(bundle.labeled) > 0:
        counts, read = labeled_frequencies(bundle.labeled, num_classes, progress)
        if counts.sum() > 0:
            frequencies = counts
            reference = f"labelled set ({read} masks of data.name={trained.cfg.data.name})"

    collected: dict[str, list[np.ndarray]] = {k: [] for k in ("index", *SCORES, "fractions")}
    for batch in logit_batches(
        trained, image_set, None, batch_size, workers, failed, progress, desc="score"
    ):
        scores = image_scores(batch.logits, pair, student)
        collected["index"].append(np.asarray(batch.indices))
        for k, v in scores.items():
            collected[k].append(v)
    if not collected["index"]:
        raise DataError(
            f"none of the {len(image_set)} image(s) could be read (first: {failed[0][0]}: "
            f"{failed[0][1]}). Fix or remove them"
        )
    index = np.concatenate(collected["index"])
    fractions = np.concatenate(collected["fractions"])  # (N, K)
    if frequencies is None:
        frequencies = fractions.sum(0)
        reference = "the student's predictions on the scored images" + (
            f" (labelled set unavailable: {data_problem})" if data_problem else ""
        )
    r = rarity_weights(frequencies)
    scores = {k: np.concatenate(collected[k]) for k in SCORES if collected[k]}
    scores["rarity"] = fractions @ r
    combined = combined_score(scores, w)
    names = [image_set.refs[i].name for i in index]
    order = ranking_order(names, combined)
    rows = []
    for rank, j in enumerate(order, 1):
        ref = image_set.refs[index[j]]
        row = {"rank": rank, "name": ref.name, "path": str(ref.path) if ref.path else ""}
        row.update({k: float(scores[k][j]) if k in scores else None for k in SCORES})
        row["combined"] = float(combined[j])
        rows.append(row)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = SuggestResult(rows, pair, reference, out, failed, skipped, top_k=min(top, len(rows)))
    _write_csv(out / "ranking.csv", rows)
    write_text(out / "top.txt", "".join(f"{r['path'] or r['name']}\n" for r in result.top))
    _write_sheet(trained, pair, student, image_set, rows, index, order, result, batch_size)
    if fmt is not None:
        result.export = _write_export(
            trained, student, image_set, index, order, result, batch_size, fmt, image_prefix
        )
    summary = {
        "checkpoint": str(checkpoint),
        "step": trained.step,
        "method": trained.cfg.method.name,
        "images": len(image_set),
        "ranked": len(rows),
        "failed": [{"image": a, "reason": b} for a, b in failed],
        "top": result.top_k,
        "pair": list(pair) if pair else None,
        "student": student,
        "weights": {"disagreement": w[0], "uncertainty": w[1], "rarity": w[2]},
        "formula": FORMULA,
        "rarity_reference": reference,
        "class_frequencies": dict(zip(classes, (frequencies / frequencies.sum()).tolist())),
        "rarity_weights": dict(zip(classes, r.tolist())),
        "eval": trained.cfg.eval.mode.value,
    }
    write_json(out / "suggest.json", summary)
    # listed, so that a later suggest (or predict, pseudolabel) never ranks its own outputs
    names = ("ranking.csv", "top.txt", "contact_sheet.png", "suggest.json")
    record_outputs(out / OUTPUTS_MANIFEST, [out / n for n in names])
    return result


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        scores = ("" if row[k] is None else f"{row[k]:.6f}" for k in SCORES)
        writer.writerow([row["rank"], row["name"], row["path"], *scores, f"{row['combined']:.6f}"])
    write_text(path, text.getvalue())  # atomic: a full disk names the file, leaves no part


def _write_sheet(
    trained: Segmenter, pair, student, image_set, rows, index, order, result, batch_size
):
    """contact_sheet.png: the top rows (at most ``MAX_SHEET_ROWS``), image | each model."""
    shown = rows[: min(result.top_k, MAX_SHEET_ROWS)]
    positions = [int(index[j]) for j in order[: len(shown)]]
    columns = [n for n in (*(pair or ()), student) if n != student] + [student]
    preds: dict[int, dict] = {}
    for batch in logit_batches(
        trained, image_set, positions, batch_size, progress=False, desc="contact sheet"
    ):
        for k, i in enumerate(batch.indices):
            preds[i] = {
                "image": batch.images[k],
                "preds": {n: batch.logits[n][k].argmax(0).cpu().numpy() for n in columns},
            }
    samples = []
    for row, i in zip(shown, positions):
        if i not in preds:  # unreadable on the second read
            continue
        samples.append(
            {
                "name": row["name"],
                "label": f"#{row['rank']} {row['name']}\ncombined {row['combined']:.3f}",
                "image": preds[i]["image"],
                "mask": None,
                "preds": preds[i]["preds"],
            }
        )
    result.sheet = samples
    lut = label_colors(trained.palette, len(trained.classes))
    plot_samples(samples, trained.classes, lut, result.out_dir / "contact_sheet.png")


def _write_export(
    trained: Segmenter, student, image_set, index, order, result, batch_size, fmt, image_prefix
) -> Path:
    """The top K images with the student's masks and their combined score, for a tool."""
    positions = [int(index[j]) for j in order[: result.top_k]]
    names = {i: export_name(image_set.refs[i], image_prefix) for i in positions}
    export = ToolExport(
        fmt,
        result.out_dir,
        trained.classes,
        label_colors(trained.palette, len(trained.classes)),
        f"dualteacher {trained.cfg.method.name} step {trained.step} ({student})",
    )
    masks: dict[int, np.ndarray] = {}
    for batch in logit_batches(trained, image_set, positions, batch_size, progress=False, desc=fmt):
        for k, i in enumerate(batch.indices):
            masks[i] = batch.logits[student][k].argmax(0).to(torch.uint8).cpu().numpy()
    for row, i in zip(result.top, positions):
        if i in masks:  # unreadable on the second read: left out
            export.add(names[i], masks[i], row["combined"], row["rank"])
    return export.close()


def format_summary(result: SuggestResult) -> str:
    """What ``dualteacher suggest`` prints at the end."""
    out = result.out_dir
    what = (
        f"disagreement of {result.pair[0]} and {result.pair[1]}, "
        if result.pair
        else "no second model: "
    )
    lines = [
        f"ranked {len(result.rows)} image(s): {out / 'ranking.csv'}",
        f"top {result.top_k}: {out / 'top.txt'}, {out / 'contact_sheet.png'}"
        + (f" (first {MAX_SHEET_ROWS} shown)" if result.top_k > MAX_SHEET_ROWS else ""),
        f"score: {what}student uncertainty, rarity from the {result.rarity_reference}",
    ]
    if result.export is not None:
        lines.append(f"pre-annotations of the top {result.top_k}: {result.export}")
    return "\n".join(lines)
