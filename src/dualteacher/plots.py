"""Figures and colours: training curves, confusion matrices, sample grids, mIoU against time.

matplotlib is imported lazily, with the non-interactive Agg backend, so training on a machine
without a display works and ``import dualteacher.plots`` stays cheap. The colour helpers
(``label_colors``, ``colorize``, ``overlay``) are plain numpy and shared with ``predict``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dualteacher.config import IGNORE_INDEX
from dualteacher.outputs import save_figure

IGNORE_COLOR = (255, 255, 255)  # how ignored pixels (255) are drawn in masks
_SHIFT_COLORS = ("#cfe2f3", "#fce5cd", "#d9ead3", "#ead1dc")  # shading per active teacher
_MAX_SHADED_SHIFTS = 80  # more shifts than this are stripes, not information
SAMPLE_CELL = 2.1  # inches per image in ``plot_samples`` grids, drawn at 100 dpi (210 px)


def _pyplot():
    # Here, not at the top: matplotlib is slow to import and only needed when drawing.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------- colours
def default_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """``n`` distinct colours: the bits of the class id spread over R, G and B, high bits
    first (the usual VOC-style palette), so neighbouring ids get very different colours."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


def label_colors(palette: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(256, 3) uint8 lookup table: ``palette`` for the class ids it covers, the default
    palette for the rest, ``IGNORE_COLOR`` for the ignore id 255."""
    lut = np.array(default_palette(256), dtype=np.uint8)
    for i, c in enumerate(list(palette)[:num_classes]):
        lut[i] = c
    if num_classes <= IGNORE_INDEX:
        lut[IGNORE_INDEX] = IGNORE_COLOR
    return lut


def colorize(index: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours."""
    return lut[np.asarray(index, dtype=np.int64).clip(0, len(lut) - 1)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W, 3) uint8 image with a colour mask of the same size."""
    mixed = image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha
    return mixed.round().clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- training curves
def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a run's ``metrics.jsonl``, sorted by step. A resumed run logs the steps after its
    last checkpoint twice: the later row of each (kind, step) wins. Broken lines are skipped."""
    rows: dict[tuple[str, int], dict] = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if not isinstance(row, dict) or "step" not in row:
            continue
        kind = "val" if any(k.startswith("miou_") for k in row) else "train"
        rows[(kind, int(row["step"]))] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def _smooth(y: np.ndarray) -> np.ndarray:
    """Centred moving average over ~1/12 of the points; NaN gaps stay gaps (edges and points
    next to a gap average over the values available)."""
    w = max(1, len(y) // 25)
    if w == 1:
        return y
    kernel = np.ones(2 * w + 1)
    valid = ~np.isnan(y)
    num = np.convolve(np.where(valid, y, 0.0), kernel, mode="same")
    den = np.convolve(valid.astype(float), kernel, mode="same")
    return np.where(valid, num / np.maximum(den, 1), np.nan)


def teacher_shifts(
    rows: list[dict], epoch_steps: int | None
) -> tuple[list[tuple[int, int, int]], str | None]:
    """Spans ``(first_step, last_step, teacher)`` of the active teacher, in steps done.

    The active teacher is constant within an epoch (it switches by epoch), so spans are exact
    when every epoch has a logged row. Returns ``([], reason)`` when they cannot be drawn.
    """
    rows = [r for r in rows if "active_teacher" in r and "epoch" in r]
    if not rows:
        return [], None
    if not epoch_steps:
        return [], "teacher shifts not shaded: steps per epoch unknown"
    by_epoch = {int(r["epoch"]): int(r["active_teacher"]) for r in rows}
    last_step = max(int(r["step"]) for r in rows)
    epochs = range(max(by_epoch) + 1)
    if any(e not in by_epoch for e in epochs):
        return [], (
            f"teacher shifts not shaded: an epoch ({epoch_steps} steps) is shorter than the "
            "logging interval (train.log_every)"
        )
    spans: list[list[int]] = []
    for e in epochs:
        k = by_epoch[e]
        if spans and spans[-1][2] == k:
            spans[-1][1] = (e + 1) * epoch_steps
        else:
            spans.append([e * epoch_steps, (e + 1) * epoch_steps, k])
    if len(spans) > _MAX_SHADED_SHIFTS:
        return [], f"{len(spans)} teacher shifts: too many to shade"
    return [(a, min(b, last_step), k) for a, b, k in spans], None


def plot_training_curves(
    rows: list[dict], path: str | Path, epoch_steps: int | None = None, title: str | None = None
) -> None:
    """Loss terms, mask ratio and validation mIoU against step, one panel each, with the
    active teacher's shifts shaded. ``rows``: ``read_metrics`` of a run."""
    plt = _pyplot()
    from matplotlib.patches import Patch  # matplotlib: when drawing only (module docstring)

    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if any(k.startswith("miou_") for k in r)]
    loss_keys = sorted({k for r in train_rows for k in r if k.startswith("loss")})
    loss_keys.sort(key=lambda k: (k != "loss", k))  # the total first
    has_mask = any("mask_ratio" in r for r in train_rows)
    panels = ["loss"] + (["mask"] if has_mask else []) + (["val"] if val_rows else [])
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 2.4 * len(panels) + 0.6), dpi=100, sharex=True, squeeze=False
    )
    axes = dict(zip(panels, axes[:, 0]))
    spans, note = teacher_shifts(train_rows, epoch_steps)

    def series(rs, key):
        """Steps and values of ``key``; NaN where a row lacks it (e.g. ``loss_cutmix`` outside
        teacher A's shifts), so the line breaks there instead of bridging the gap."""
        x = np.array([r["step"] for r in rs], dtype=float)
        y = np.array([r.get(key, np.nan) for r in rs], dtype=object)
        y = np.array([v if isinstance(v, int | float) else np.nan for v in y], dtype=float)
        return x, y

    ax = axes["loss"]
    for i, key in enumerate(loss_keys):
        x, y = series(train_rows, key)
        if np.isnan(y).any():
            # a per-shift series (``loss_cutmix`` only while teacher A is active, logged on
            # alternate rows): drawn over its own steps, else no two points would be adjacent
            # and no line would show
            x, y = x[~np.isnan(y)], y[~np.isnan(y)]
        if len(x) > 40:  # raw values faintly, smoothed on top
            ax.plot(x, y, color=f"C{i}", lw=0.6, alpha=0.3)
            y = _smooth(y)
        ax.plot(x, y, color=f"C{i}", lw=1.4, label=key)
    ax.set_ylabel("loss")
    ax.set_ylim(bottom=0)
    if "mask" in axes:
        ax = axes["mask"]
        x, y = series(train_rows, "mask_ratio")
        if len(x) > 40:
            ax.plot(x, y, color="C0", lw=0.6, alpha=0.3)
            y = _smooth(y)
        ax.plot(x, y, color="C0", lw=1.4, label="mask_ratio")
        ax.set_ylabel("mask ratio")
        ax.set_ylim(0, 1.02)
    if "val" in axes:
        ax = axes["val"]
        models = sorted({k for r in val_rows for k in r if k.startswith("miou_")})
        models.sort(key=lambda k: (k != "miou_student", k))
        for i, key in enumerate(models):
            x, y = series(val_rows, key)
            ax.plot(x, y, color=f"C{i}", marker="o", ms=3, lw=1.4, label=key[len("miou_") :])
        if any("select_miou_student" in r for r in val_rows):  # data.select: picks best.pt
            x, y = series(val_rows, "select_miou_student")
            ax.plot(x, y, color="C0", ls="--", marker="s", ms=3, lw=1.0, label="student (select)")
        ax.set_ylabel("val mIoU (%)")
    for ax in axes.values():
        for a, b, k in spans:
            ax.axvspan(a, b, color=_SHIFT_COLORS[k % len(_SHIFT_COLORS)], lw=0, zorder=0)
        ax.grid(alpha=0.3)
    handles, labels = axes["loss"].get_legend_handles_labels()
    for k in sorted({k for _, _, k in spans}):
        handles.append(Patch(color=_SHIFT_COLORS[k % len(_SHIFT_COLORS)]))
        labels.append(f"teacher {chr(ord('A') + k)} active")
    for name, ax in axes.items():
        # legends right of the panels: they never hide a curve
        kw = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}
        if name == "loss":
            ax.legend(handles, labels, **kw)
        elif ax.lines:
            ax.legend(**kw)
    list(axes.values())[-1].set_xlabel("step" + (f"   ({note})" if note else ""))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    """Write atomically (``outputs.save_figure``): a reader never sees a half-written PNG, a
    full disk leaves none behind."""
    try:
        save_figure(fig, path)
    finally:
        _pyplot().close(fig)


# -------------------------------------------------------------------------------- evaluation
def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: list[str], path: str | Path, title: str = ""
) -> None:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction).

    Cells give the share of a true class's pixels predicted as each class, in percent; the
    numbers are written in the cells up to 25 classes, beyond that only colours are kept (on a
    square-root scale). Rows of classes absent from the ground truth are grey.
    """
    plt = _pyplot()
    mat = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    totals = mat.sum(1, keepdims=True)
    norm = np.divide(mat, totals, out=np.full_like(mat, np.nan), where=totals > 0)
    side = min(24.0, max(4.5, 2.6 + 0.15 * k))  # inches
    font = min(9.0, 0.7 * side * 72 * 0.8 / k)  # points: fits the row pitch of the matrix
    numbers = k <= 25
    fig, ax = plt.subplots(figsize=(side + 1.4, side), dpi=100 if k <= 60 else 130)
    from matplotlib.colors import Normalize, PowerNorm  # when drawing only (docstring)

    cmap = plt.get_cmap("Blues").with_extremes(bad="#d9d9d9")
    # Without numbers in the cells, a square-root scale keeps small confusions visible.
    scale = Normalize(0, 100) if numbers else PowerNorm(0.5, 0, 100)
    im = ax.imshow(norm * 100, cmap=cmap, norm=scale, interpolation="nearest")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    if numbers:
        for i in range(k):
            for j in range(k):
                v = norm[i, j]
                if not math.isnan(v):
                    color = "white" if v > 0.55 else "black"
                    kw = {"ha": "center", "va": "center", "fontsize": font - 1, "color": color}
                    ax.text(j, i, f"{100 * v:.0f}", **kw)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("% of the ground-truth class's pixels" + ("" if numbers else " (sqrt scale)"))
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_samples(
    samples: list[dict],
    classes: list[str],
    lut: np.ndarray,
    path: str | Path,
    ignore_index: int = IGNORE_INDEX,
) -> None:
    """Grid of images: image | ground truth | prediction of each model, one row per sample,
    with a legend of the classes that appear in it.

    ``samples``: dicts with ``name``, ``image`` (H, W, 3) uint8, ``mask`` (H, W) ground truth
    (``None`` for every sample: no ground-truth column, e.g. unlabelled images), ``preds``
    {model name: (H, W) class ids} and optionally ``label``, the row's caption (default
    ``name``).
    """
    plt = _pyplot()
    from matplotlib.patches import Patch  # matplotlib: when drawing only (module docstring)

    models = list(samples[0]["preds"]) if samples else []
    truth = bool(samples) and all(s.get("mask") is not None for s in samples)
    ncols, nrows = 1 + truth + len(models), max(1, len(samples))
    legend_rows = 1
    present: set[int] = set()
    for s in samples:
        if truth:
            present |= set(np.unique(s["mask"]).tolist())
        for p in s["preds"].values():
            present |= set(np.unique(p).tolist())
    ids = sorted(i for i in present if i < len(classes))
    entries = [(classes[i], lut[i]) for i in ids[:40]]
    if ignore_index in present:
        entries.append(("ignore", lut[ignore_index]))
    legend_cols = min(6, max(1, len(entries)))
    legend_rows = math.ceil(len(entries) / legend_cols)
    cell = SAMPLE_CELL
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(cell * ncols, cell * nrows + 0.35 * legend_rows + 0.3),
        dpi=100,
        squeeze=False,
    )
    titles = ["image", *(["ground truth"] * truth), *(f"prediction: {m}" for m in models)]
    for r, s in enumerate(samples):
        panels = [s["image"], *([colorize(s["mask"], lut)] if truth else [])]
        panels += [colorize(s["preds"][m], lut) for m in models]
        for c, img in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(s.get("label", s["name"]), fontsize=7)
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.4", lw=0.5) for _, c in entries]
    labels = [n for n, _ in entries]
    if len(ids) > 40:
        handles.append(Patch(color="none"))
        labels.append(f"+{len(ids) - 40} more")
    fig.legend(handles, labels, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, (0.35 * legend_rows + 0.2) / fig.get_figheight(), 1, 1))
    _save(fig, path)


# ---------------------------------------------------------------------------------- compare
def plot_legend(classes: Sequence[str], lut: np.ndarray, path: str | Path) -> None:
    """The classes and their colours as a picture (``predict`` writes it beside its colour
    PNGs): one swatch and name per class."""
    plt = _pyplot()
    from matplotlib.patches import Patch  # matplotlib: when drawing only (module docstring)

    rows = max(1, len(classes))
    fig = plt.figure(figsize=(3.2, 0.26 * rows + 0.3), dpi=100)
    handles = [Patch(color=np.asarray(lut[i][:3]) / 255) for i in range(len(classes))]
    labels = [f"{i} {name}" for i, name in enumerate(classes)]
    fig.legend(handles, labels, loc="center", frameon=False, fontsize=9)
    _save(fig, path)


def plot_miou_vs_time(
    curves: dict[str, list[list[tuple[float, float]]]],
    path: str | Path,
    target: tuple[float, str] | None = None,
    crossings: dict[str, list[float]] | None = None,
):
    """Validation mIoU of the student against training wall-clock: ``curves[method]`` holds one
    list of ``(seconds, mIoU)`` points per seed. One seed: its line. Several: the mean over
    seeds (at each validation, time averaged too) with a band from the lowest to the highest
    seed; seeds of unequal length are drawn as thin lines instead. ``target``: ``(mIoU,
    label)``, a dashed horizontal line; ``crossings[method]``: the seconds at which its seeds
    reach it, each drawn as a marker on that line in the method's colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    if target is not None:
        ax.axhline(target[0], color="0.35", ls="--", lw=1.0, label=target[1])
    for i, (method, runs) in enumerate(curves.items()):
        runs = [pts for pts in runs if pts]
        if not runs:
            continue
        color = f"C{i}"
        if len(runs) > 1 and len({len(p) for p in runs}) == 1:
            arr = np.array(runs, dtype=float)  # (seeds, validations, 2)
            t, m = arr[..., 0].mean(0), arr[..., 1]
            if len(t) > 1:  # a band needs two validations; the legend says what is drawn
                ax.fill_between(t, m.min(0), m.max(0), color=color, alpha=0.2, lw=0)
                label = f"{method} (mean, band: range over {len(runs)} seeds)"
            else:
                ax.errorbar(t, m.mean(0), yerr=[m.mean(0) - m.min(0), m.max(0) - m.mean(0)],
                            color=color, lw=0, elinewidth=1.2, capsize=3)  # fmt: skip
                label = f"{method} (mean, bar: range over {len(runs)} seeds)"
            ax.plot(t, m.mean(0), color=color, marker="o", ms=3, lw=1.8, label=label)
            continue
        for j, pts in enumerate(runs):
            t, m = zip(*pts)
            ax.plot(t, m, color=color, marker="o", ms=3, lw=1.2, label=None if j else method)
    if target is not None:
        for i, method in enumerate(curves):
            times = (crossings or {}).get(method, [])
            if times:
                label = f"{method} reaches it ({len(times)} of {len(curves[method])} seeds)"
                ax.plot(times, [target[0]] * len(times), ls="none", marker="v", ms=8,
                        mec="black", mew=0.6, color=f"C{i}", label=label)  # fmt: skip
    ax.set_xlabel("training wall-clock (s, validation excluded)")
    ax.set_ylabel("validation mIoU (%) of the student")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
