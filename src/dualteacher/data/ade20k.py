"""ADE20K, SceneParsing release (``data.name=ade20k``): 150 classes, 255 = ignore.

Layout under ``data.root`` (``ADEChallengeData2016/`` or the folder holding it)::

    images/training/ADE_train_00000001.jpg        20,210 images
    images/validation/ADE_val_00000001.jpg         2,000 images
    annotations/training/ADE_train_00000001.png    raw values 0..150, 0 = "other"
    annotations/validation/ADE_val_00000001.png

Raw mask value 0 becomes ignore and 1..150 become classes 0..149 (mmseg's
``reduce_zero_label``, as in the official Dual Teacher code).

Defaults without split files: every training image is labelled and the unlabelled set is
empty (give ``data.labeled`` and the other training images become unlabelled); val is
``validation``. Dual Teacher's own lists (``training1263_l.txt`` ...) and UniMatch V2's
(``splits/ade20k/1_16/labeled.txt`` ...) both work on this layout.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from dualteacher.config import IGNORE_INDEX, DataConfig
from dualteacher.data.base import DataBundle
from dualteacher.data.files import (
    INVALID,
    Entry,
    FileSource,
    find_dataset_dir,
    first_existing,
)
from dualteacher.data.splits import folder_split_parts

CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
# raw 0 ("other") -> ignore, 1..150 -> 0..149, anything else is not an ADE label
LUT = np.full(256, INVALID, np.int16)
LUT[0] = IGNORE_INDEX
LUT[1 : len(CLASSES) + 1] = np.arange(len(CLASSES))
EXPECTED = "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"


def palette() -> list[tuple[int, int, int]]:
    """150 distinct colours: hues spread by the golden ratio, three brightness levels."""
    out = []
    for i in range(len(CLASSES)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, (1.0, 0.8, 0.6)[i % 3])
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


class AdeLayout:
    def __init__(self, root: Path):
        self.root = root

    def _folder(self, name: str) -> str:
        return "validation" if name.startswith("ADE_val_") else "training"

    def mask_of(self, image: Path) -> Path:
        parts = image.parts
        if "images" in parts[:-1]:  # .../images/<split>/<file> -> .../annotations/<split>/<file>
            i = len(parts) - 2 - parts[-2::-1].index("images")
            return Path(*parts[:i], "annotations", *parts[i + 1 : -1], image.stem + ".png")
        return image.with_suffix(".png")

    def from_id(self, name: str, labeled: bool) -> Entry:
        image = first_existing(
            *(
                self.root / "images" / self._folder(name) / f"{name}{ext}"
                for ext in (".jpg", ".png")
            )
        )
        mask = self.root / "annotations" / self._folder(name) / f"{name}.png"
        return Entry(image, mask if labeled else None, name)

    def from_paths(self, image: Path, mask: Path | None) -> Entry:
        mask = mask if mask is not None else self.mask_of(image)
        return Entry(image, mask, image.stem)

    def scan(self, folder: str, labeled: bool) -> list[Entry]:
        images = sorted((self.root / "images" / folder).glob("*.jpg"))
        return [Entry(p, self.mask_of(p) if labeled else None, p.stem) for p in images]


def layout(cfg: DataConfig) -> AdeLayout:
    return AdeLayout(
        find_dataset_dir(cfg, ["ADEChallengeData2016"], ["images", "annotations"], EXPECTED)
    )


def source(entries: list[Entry], origin: str) -> FileSource:
    return FileSource(entries, LUT, "0..150, 0 = other/ignore", origin)


def build(cfg: DataConfig) -> DataBundle:
    """ADE20K with the defaults described in the module docstring."""
    (labeled, lab_origin), (unlabeled, unl_origin), (val, val_origin) = folder_split_parts(
        cfg, layout(cfg), "training", "validation", "images"
    )
    unl = source(unlabeled, unl_origin)
    unl.empty_hint = "give data.labeled=SPLIT_FILE: the other training images become unlabelled"
    return DataBundle(
        labeled=source(labeled, lab_origin),
        unlabeled=unl,
        val=source(val, val_origin),
        classes=list(CLASSES),
        palette=palette(),
    )


def split_pool(cfg: DataConfig, blended: bool = False) -> tuple[list[Entry], list[Entry]]:
    """(labelled candidates, other unlabelled images) for ``dualteacher splits``."""
    return layout(cfg).scan("training", labeled=True), []
