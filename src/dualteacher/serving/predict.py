"""``dualteacher predict CHECKPOINT INPUT... --out DIR``: segment images of any size.

Inputs are image files, folders (searched recursively for image files by extension; other
files there are skipped and counted) and glob patterns (``"photos/**/*.jpg"``). For each image
``NAME`` (a folder's sub-folders are kept under ``DIR``) three files are written:

- ``NAME.png``: the class ids, a palette PNG (mode ``P``) whose palette is the dataset's
  colours, so it opens as a colour picture and reads back as ids;
- ``NAME_color.png``: the same as an RGB picture;
- ``NAME_overlay.png``: the image blended with the colours.

With several ``--models`` each gets a sub-folder ``DIR/<model>/``. ``DIR/classes.json`` lists
the class ids, names and colours, and ``DIR/legend.png`` shows them (a swatch per class).
Inference follows the checkpoint's ``eval`` settings (whole
image, sliding window or resize; override e.g. ``eval.mode=sliding``), images are normalised as
in training. Images are read as training reads them (EXIF orientation applied, as viewers show
them; 16-bit and float images scaled to 8 bits by their value range; see
``data.files.decode_image``). An input that cannot be read is reported and skipped; the rest
are still written.

Outputs never overwrite one another: names whose files would collide (``z`` and ``z_overlay``:
both would write ``z_overlay.png``; ``a.jpg`` and ``a.png``) get ``_2``, ``_3``, ... Every
output is written atomically and listed in ``DIR/.dualteacher_predict``; folder inputs leave
out ``DIR`` when it lies inside them and every file such a list names, so predicting a folder
again does not predict on its own earlier outputs.

The model comes from a checkpoint or from a directory written by ``dualteacher export``, run
by PyTorch or (``runtime="onnx"``, an export with ``model.onnx``) ONNX Runtime: see
``serving.segmenter``. Inputs are collected by ``serving.inputs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dualteacher.errors import ConfigError
from dualteacher.outputs import (
    save_image,
    write_text,
    writes_under,
)
from dualteacher.plots import colorize, label_colors, overlay, plot_legend
from dualteacher.serving.inputs import (
    MANIFEST,
    OUTPUT_SUFFIXES,
    ImageFiles,
    collect_inputs,
    record_outputs,
)
from dualteacher.serving.segmenter import load_segmenter


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)  # index PNGs written
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    skipped: list[Path] = field(default_factory=list)  # non-image files found in folders
    # image files in the input folders that an earlier predict wrote (left out)
    previous_outputs: list[Path] = field(default_factory=list)


def _save_outputs(
    out: Path, name: str, image: np.ndarray, pred: np.ndarray, lut: np.ndarray, alpha: float
) -> list[Path]:
    """Write the index, colour and overlay PNGs of one input (each atomically: a full disk
    leaves no partial file, see ``dualteacher.outputs``); returns their paths."""
    base = out / name
    if lut.shape[0] <= 256 and pred.max(initial=0) < 256:
        index = Image.fromarray(pred.astype(np.uint8))  # mode L; the palette makes it P
        index.putpalette(lut[:256].reshape(-1).tolist())
    else:  # more than 256 classes: 16-bit grey ids, no palette
        index = Image.fromarray(pred.astype(np.uint16))
    color = colorize(pred, lut)
    images = (index, Image.fromarray(color), Image.fromarray(overlay(image, color, alpha)))
    paths = [base.with_name(base.name + sfx) for sfx in OUTPUT_SUFFIXES]
    for im, path in zip(images, paths):
        save_image(im, path)
    return paths


@writes_under("out_dir")
def predict(
    checkpoint: str | Path,
    inputs: list[str],
    out_dir: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    models: str = "student",
    batch_size: int | None = None,
    alpha: float = 0.5,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
    runtime: str = "torch",
) -> PredictResult:
    """Predict every image of ``inputs`` with ``checkpoint`` (a checkpoint file or a directory
    written by ``dualteacher export``); see the module docstring.

    Args:
        overrides: ``key=value`` changes of the stored config, e.g. ``eval.mode=sliding``.
        models: ``student``, ``all`` or comma-separated model names (``teacher_a``, ...).
        batch_size: images per forward pass (equal sizes only); default ``eval.batch_size``.
        alpha: weight of the colours in the overlay.
        workers: DataLoader workers that read images.
        runtime: ``torch``, or ``onnx`` (ONNX Runtime; an exported directory with model.onnx).
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha={alpha}: the overlay's colour weight must be in [0, 1]")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1 image per forward")
    items, failed, skipped, previous = collect_inputs(list(inputs), out_dir)
    result = PredictResult(failed=failed, skipped=skipped, previous_outputs=previous)
    if not items:
        return result
    trained = load_segmenter(checkpoint, overrides, models, device, runtime)
    nets = trained.models
    cfg = trained.cfg
    lut = label_colors(trained.palette, trained.num_classes)
    out_dir = Path(out_dir)
    write_text(
        out_dir / "classes.json",
        json.dumps(
            [{"id": i, "name": c, "color": lut[i].tolist()} for i, c in enumerate(trained.classes)],
            indent=1,
        ),
    )
    # the colours of the _color / _overlay PNGs, as a picture (classes.json has them as data)
    plot_legend(trained.classes, lut, out_dir / "legend.png")
    record_outputs(out_dir / MANIFEST, [out_dir / "legend.png"])
    outs = {n: out_dir / n if len(nets) > 1 else out_dir for n in nets}
    inputs_resolved = {it.path.resolve() for it in items}
    loader = DataLoader(
        ImageFiles(items, cfg.data.max_image_pixels),
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=workers,
        collate_fn=list,
    )
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
    for chunk in loader:
        groups: dict[tuple[int, int], list[dict]] = {}
        for s in chunk:
            if "error" in s:
                result.failed.append((str(s["item"].path), s["error"]))
                bar.update(1)
                continue
            clash = [o for o in outs.values() if _targets(o, s["item"].name) & inputs_resolved]
            if clash:
                result.failed.append(
                    (str(s["item"].path), "an output would overwrite an input; use another --out")
                )
                bar.update(1)
                continue
            groups.setdefault(s["image"].shape[:2], []).append(s)
        for group in groups.values():
            # (B, 3, H, W) normalised like the training images
            x = trained.to_input([s["image"] for s in group])
            for name in nets:
                pred = trained.logits(x, name).argmax(1).cpu().numpy()
                for s, p in zip(group, pred):
                    paths = _save_outputs(outs[name], s["item"].name, s["image"], p, lut, alpha)
                    record_outputs(out_dir / MANIFEST, paths)
                    if name == next(iter(nets)):
                        result.written.append(paths[0])
            bar.update(len(group))
    bar.close()
    return result


def _targets(out: Path, name: str) -> set[Path]:
    base = out / name
    return {base.with_name(base.name + sfx).resolve() for sfx in OUTPUT_SUFFIXES}


def format_failures(result: PredictResult) -> str:
    """The end-of-run listing of inputs that could not be predicted."""
    lines = [f"{len(result.failed)} input(s) failed:"]
    lines += [f"  {path}: {reason}" for path, reason in result.failed]
    return "\n".join(lines)
