"""``dualteacher pseudolabel CHECKPOINT --images INPUT... --out DIR``: pseudo-labels as files.

One model of the checkpoint (``student`` by default) predicts every image (files, folders or
globs, as ``predict`` takes them; the checkpoint's ``eval`` settings). For an image ``NAME``
(a folder's sub-folders kept) it writes, in the mask format of the ``folder`` dataset
(``data/folder.py``: ``masks/`` with the images' relative names, ``.png``):

- ``DIR/masks/NAME.png``: class ids as a palette PNG (mode ``P``, the dataset's colours), and
  ``IGNORE`` (255, the folder dataset's default ``ignore_index``) where the model's top softmax
  probability is below ``conf``;
- ``DIR/confidence/NAME.png``: that probability as 8-bit grey, ``round(255 p)``;
- ``DIR/classes.yaml``: the classes, colours and ignore value, as the folder dataset reads it;
- ``DIR/pseudolabels.tsv``: which input each mask belongs to (``image``, ``mask``,
  ``confidence``, tab-separated, one row per image of this run);
- with ``fmt``, every mask as a pre-annotation for an annotation tool (``coco.json``,
  ``cvat.zip`` or ``labelstudio.json``; ``serving.tool_export``), scored by its mean
  confidence.

Names are unique: inputs whose names differ only by their extension (``x.jpg`` and ``x.png``)
both keep it (``masks/x.jpg.png``, ``masks/x.png.png``), and the TSV maps each image to its
mask. The outputs are listed in ``DIR/.dualteacher_outputs``; input folders leave out ``DIR``
when it lies inside them and every file such a list names, so labelling a folder again never
reads its own earlier masks or confidence maps.

Existing masks are never overwritten (they may hold corrections) unless ``overwrite``. An image
that cannot be read is reported and skipped; the others are still written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from dualteacher.config import IGNORE_INDEX
from dualteacher.errors import ConfigError, DataError
from dualteacher.outputs import save_image, write_text, writes_under
from dualteacher.plots import label_colors
from dualteacher.serving.inputs import (
    IMAGE_EXTENSIONS,
    OUTPUTS_MANIFEST,
    ImageSet,
    logit_batches,
    record_outputs,
)
from dualteacher.serving.segmenter import load_segmenter
from dualteacher.serving.tool_export import FORMATS, ToolExport, export_name

IGNORE = IGNORE_INDEX  # mask value of pixels below the confidence threshold


@dataclass
class PseudoLabelResult:
    written: list[Path] = field(default_factory=list)  # the masks written
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    skipped: list[Path] = field(default_factory=list)  # non-image files in input folders
    previous: list[Path] = field(default_factory=list)  # earlier outputs left out of the inputs
    renamed: list[tuple[Path, Path]] = field(default_factory=list)  # (image, mask) not NAME.png
    mapping: Path | None = None  # DIR/pseudolabels.tsv
    export: Path | None = None  # the pseudo-labels for an annotation tool (``fmt``)
    kept: float = 0.0  # share of all pixels at or above conf (the rest are IGNORE)


def save_index_png(ids: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """(H, W) uint8 ids -> palette PNG (mode P) with ``palette`` (256, 3) uint8."""
    im = Image.fromarray(ids.astype(np.uint8))  # mode L; the palette makes it P
    im.putpalette(palette[:256].reshape(-1).tolist())
    save_image(im, path)  # atomic: a full disk names the file and leaves no partial PNG


@writes_under("out_dir")
def pseudolabel(
    checkpoint: str | Path,
    images: Sequence[str],
    out_dir: str | Path,
    *,
    conf: float = 0.95,
    model: str = "student",
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = True,
    fmt: str | None = None,
    image_prefix: str = "",
) -> PseudoLabelResult:
    """Write pseudo-labels of ``images``; see the module docstring.

    Args:
        conf: pixels whose top probability is below it become ``IGNORE``; in (0, 1].
        model: ``student``, ``teacher_a``, ``teacher_b``, ``teacher`` (what the checkpoint has).
        overwrite: replace masks that ``out_dir/masks/`` already holds.
        fmt: also write every mask as a pre-annotation for an annotation tool, ``coco``,
            ``cvat`` or ``labelstudio`` (``serving.tool_export``), its score the image's mean
            top probability, each image named ``image_prefix`` + its relative name.
    """
    if not 0 < conf <= 1:
        raise ConfigError(
            f"--conf {conf}: the confidence threshold is a probability in (0, 1], e.g. 0.95"
        )
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if "," in model or model == "all":
        raise ConfigError(f"--model {model}: give one model name, e.g. student or teacher_a")
    image_set, failed, skipped = ImageSet.from_inputs(images, out_dir, keep_extension=True)
    result = PseudoLabelResult(failed=failed, skipped=skipped, previous=image_set.previous)
    if len(image_set) == 0:
        reasons = "; ".join(f"{a}: {r}" for a, r in failed) or "no image files"
        raise DataError(
            f"--images {' '.join(images)}: nothing to label ({reasons}). Give image files "
            f"({' '.join(sorted(IMAGE_EXTENSIONS))}), folders holding them, or globs"
        )
    out = Path(out_dir)
    targets = [out / "masks" / f"{ref.name}.png" for ref in image_set.refs]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(
            f"{existing[0]} exists ({len(existing)} of the {len(targets)} masks are already in "
            f"{out / 'masks'}): pseudolabel does not overwrite masks, which may hold your "
            "corrections. Choose another --out, or pass --overwrite"
        )
    trained = load_segmenter(checkpoint, overrides, model, device)
    num_classes = len(trained.classes)
    if num_classes >= IGNORE:
        raise ConfigError(
            f"{checkpoint} has {num_classes} classes: 8-bit masks with ignore {IGNORE} hold at "
            f"most {IGNORE} classes"
        )
    lut = label_colors(trained.palette, num_classes)  # (256, 3); 255 drawn white
    out.mkdir(parents=True, exist_ok=True)
    classes = [
        {"name": c, "color": [int(v) for v in lut[i]]} for i, c in enumerate(trained.classes)
    ]
    write_text(
        out / "classes.yaml",
        yaml.safe_dump(
            {"classes": classes, "ignore_index": IGNORE}, sort_keys=False, default_flow_style=None
        ),
    )
    record_outputs(out / OUTPUTS_MANIFEST, [out / "classes.yaml"])
    export = None
    if fmt is not None:
        version = f"dualteacher {trained.cfg.method.name} step {trained.step} ({model})"
        export = ToolExport(fmt, out, trained.classes, lut, version)
    kept = total = 0
    rows = []
    for batch in logit_batches(
        trained, image_set, None, batch_size, workers, result.failed, progress, "pseudolabel"
    ):
        prob, pred = torch.softmax(batch.logits[model], 1).max(1)  # (B, H, W) each
        keep = prob >= conf
        ids = torch.where(keep, pred, torch.full_like(pred, IGNORE)).to(torch.uint8).cpu().numpy()
        confidence = (prob * 255).round().to(torch.uint8).cpu().numpy()
        kept += int(keep.sum())
        total += keep.numel()
        for k, i in enumerate(batch.indices):
            ref = image_set.refs[i]
            mask, conf_map = (out / sub / f"{ref.name}.png" for sub in ("masks", "confidence"))
            save_index_png(ids[k], lut, mask)
            save_image(Image.fromarray(confidence[k]), conf_map)
            record_outputs(out / OUTPUTS_MANIFEST, [mask, conf_map])
            result.written.append(mask)
            rows.append((ref.path, mask, conf_map))
            if ref.path is not None and mask.stem != ref.path.stem:
                result.renamed.append((ref.path, mask))
            if export is not None:
                score = float(prob[k].mean())
                export.add(export_name(ref, image_prefix), ids[k], score, None)
    result.kept = kept / total if total else 0.0
    result.mapping = out / "pseudolabels.tsv"
    write_text(
        result.mapping,
        "image\tmask\tconfidence\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows),
    )
    record_outputs(out / OUTPUTS_MANIFEST, [result.mapping])
    if export is not None:
        result.export = export.close()
    return result
