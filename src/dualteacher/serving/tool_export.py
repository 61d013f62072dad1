"""Masks out to annotation tools: ``suggest`` and ``pseudolabel --format coco|cvat|labelstudio``.

``ToolExport`` takes one image's mask at a time (class ids, 255 = ignore) with its score,
encodes it at once (``data.annotations``, the module that also reads these formats back) and
keeps only the encoded form, so a long pseudo-labelling run does not hold its masks. ``close``
writes one file into the output folder, atomically, and lists it in the folder's manifest:

- ``coco``: ``OUT/coco.json``, COCO RLE regions with the image's ``score`` (and ``rank``);
- ``cvat``: ``OUT/cvat.zip``, a "Segmentation mask 1.1" export (CVAT: Upload annotations);
  the format has no score: its image list is in ranking order;
- ``labelstudio``: ``OUT/labelstudio.json``, tasks whose one prediction has the ``score``
  (Label Studio: Import; the data manager sorts tasks by prediction score).

An image is named in the export by ``image_prefix`` + its name relative to the input
(``sub/a.jpg``), the key the tool matches its own images by: for CVAT and COCO the name in the
task, for Label Studio the image URL (``/data/local-files/?d=photos/`` for local storage).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from dualteacher.config import IGNORE_INDEX
from dualteacher.data.annotations import (
    Prediction,
    coco_categories,
    coco_image,
    cvat_index,
    cvat_mask,
    cvat_member,
    labelstudio_task,
)
from dualteacher.errors import ConfigError
from dualteacher.outputs import atomic_write, write_text
from dualteacher.serving.inputs import OUTPUTS_MANIFEST, ImageRef, record_outputs

FORMATS = {"coco": "coco.json", "cvat": "cvat.zip", "labelstudio": "labelstudio.json"}


def export_name(ref: ImageRef, image_prefix: str = "") -> str:
    """How an export names an input image: ``image_prefix`` + its relative name with its
    extension. Generated images (no file) cannot be named."""
    if ref.path is None:
        raise ConfigError(
            f"{ref.name} is generated in memory (the demo dataset), so an annotation tool "
            "cannot be given it: write the demo data as files with `dualteacher demo-data "
            "--out DIR` and pass --images DIR/unlabeled"
        )
    return image_prefix + ref.name + ref.path.suffix


class ToolExport:
    """Encodes masks for one tool's import format as they come (see the module docstring)."""

    def __init__(
        self,
        fmt: str,
        out_dir: Path,
        classes: list[str],
        palette,
        model_version: str,
    ):
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
        self.fmt, self.path = fmt, Path(out_dir) / FORMATS[fmt]
        self.classes, self.model_version = list(classes), model_version
        self.palette = [tuple(int(v) for v in c) for c in palette[: len(classes)]]
        self.items: list = []  # encoded: COCO (image, annotations), CVAT (member, PNG), tasks
        self.with_ignore = False
        self.annotations = 0

    def add(self, file_name: str, labels: np.ndarray, score: float | None, rank: int | None):
        p = Prediction(file_name, np.asarray(labels, np.uint8), score, rank)
        self.with_ignore |= bool((p.labels == IGNORE_INDEX).any())
        if self.fmt == "coco":
            image, anns = coco_image(p, len(self.items) + 1, self.annotations + 1, self.classes)
            self.annotations += len(anns)
            self.items.append((image, anns))
        elif self.fmt == "cvat":
            self.items.append((cvat_member(p), cvat_mask(p, self.palette)))
        else:
            self.items.append(labelstudio_task(p, self.classes, model_version=self.model_version))

    def close(self) -> Path:
        """Write the export (also with no image: an empty, valid file) and list it."""
        if self.fmt == "coco":
            doc = {
                "images": [im for im, _ in self.items],
                "annotations": [a for _, anns in self.items for a in anns],
                "categories": coco_categories(self.classes, self.with_ignore),
            }
            write_text(self.path, json.dumps(doc))
        elif self.fmt == "cvat":
            files = dict(self.items)
            files |= cvat_index(self.classes, self.palette, list(files), self.with_ignore)

            def write_zip(f: io.BufferedIOBase) -> None:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    for member, content in files.items():
                        z.writestr(member, content)

            atomic_write(self.path, write_zip)
        else:
            write_text(self.path, json.dumps(self.items))
        record_outputs(self.path.parent / OUTPUTS_MANIFEST, [self.path])
        return self.path


__all__ = ["FORMATS", "ToolExport", "export_name"]
