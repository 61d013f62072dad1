"""Cityscapes (``data.name=cityscapes``): 19 train classes, 255 = ignore.

Layout under ``data.root`` (the folder holding ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       raw ids 0..33
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  optional

The official ``*_labelIds.png`` are mapped to the 19 train ids here, while loading (no
preprocessing script needed); ``*_labelTrainIds.png`` (made by cityscapesScripts) are used as
they are when present. Split files that name ``*_labelTrainIds.png`` (UniMatch's) work on a
tree that has only ``*_labelIds.png``.

Defaults without split files: every ``train`` image is labelled and the unlabelled set is
empty (give ``data.labeled`` and the unlabelled set becomes the other train images, or give
``data.unlabeled``); val is every ``val`` image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dualteacher.config import IGNORE_INDEX, DataConfig
from dualteacher.data.base import DataBundle
from dualteacher.data.files import (
    Entry,
    FileSource,
    find_dataset_dir,
    first_existing,
    identity_lut,
)
from dualteacher.data.splits import folder_split_parts

CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip
PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
# The standard labelId -> trainId table: these 19 raw ids become 0..18, every other id
# (void, ground, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
# trailer, license plate, ...) becomes ignore.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
LABEL_ID_LUT = np.full(256, IGNORE_INDEX, np.int16)
LABEL_ID_LUT[list(TRAIN_LABEL_IDS)] = np.arange(len(TRAIN_LABEL_IDS))
TRAIN_ID_LUT = identity_lut(len(CLASSES))
EXPECTED = (
    "leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "gtFine/{train,val}/<city>/*_gtFine_labelIds.png"
)
SPLITS = ("train", "val", "test", "train_extra")


def base_name(image: Path) -> str:
    """``aachen_000000_000019`` for ``aachen_000000_000019_leftImg8bit.png``."""
    return image.stem.removesuffix("_leftImg8bit")


class CityscapesLayout:
    def __init__(self, root: Path):
        self.root = root

    def mask_of(self, image: Path) -> Path:
        """The gtFine mask of a leftImg8bit image: labelTrainIds if made, else labelIds."""
        parts = image.parts
        if "leftImg8bit" in parts[:-1]:  # .../leftImg8bit/<split>/<city>/<file>: the last one
            i = len(parts) - 2 - parts[-2::-1].index("leftImg8bit")
            gt_dir = Path(*parts[:i], "gtFine", *parts[i + 1 : -1])
        else:
            gt_dir = image.parent
        base = base_name(image)
        return first_existing(
            gt_dir / f"{base}_gtFine_labelTrainIds.png", gt_dir / f"{base}_gtFine_labelIds.png"
        )

    def from_id(self, name: str, labeled: bool) -> Entry:
        base = base_name(Path(name + ".png"))
        city = base.split("_")[0]
        candidates = [
            self.root / "leftImg8bit" / s / city / f"{base}_leftImg8bit.png" for s in SPLITS
        ]
        image = first_existing(*candidates)
        return Entry(image, self.mask_of(image) if labeled else None, base)

    def from_paths(self, image: Path, mask: Path | None) -> Entry:
        if mask is None:
            mask = self.mask_of(image)
        elif not mask.is_file() and mask.name.endswith("_labelTrainIds.png"):
            mask = first_existing(
                mask, mask.with_name(mask.name.replace("_labelTrainIds", "_labelIds"))
            )
        return Entry(image, mask, base_name(image))

    def scan(self, split: str, labeled: bool) -> list[Entry]:
        images = sorted((self.root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        return [Entry(p, self.mask_of(p) if labeled else None, base_name(p)) for p in images]


class CityscapesSource(FileSource):
    def lut_for(self, mask_path: Path) -> np.ndarray:
        return LABEL_ID_LUT if mask_path.name.endswith("_labelIds.png") else TRAIN_ID_LUT


def source(entries: list[Entry], origin: str) -> CityscapesSource:
    hint = "labelIds 0..33, or labelTrainIds 0..18 with ignore 255"
    return CityscapesSource(entries, TRAIN_ID_LUT, hint, origin)


def layout(cfg: DataConfig) -> CityscapesLayout:
    return CityscapesLayout(
        find_dataset_dir(cfg, ["cityscapes"], ["leftImg8bit", "gtFine"], EXPECTED)
    )


def build(cfg: DataConfig) -> DataBundle:
    """Cityscapes with the defaults described in the module docstring."""
    (labeled, lab_origin), (unlabeled, unl_origin), (val, val_origin) = folder_split_parts(
        cfg, layout(cfg), "train", "val", "leftImg8bit"
    )
    unl = source(unlabeled, unl_origin)
    unl.empty_hint = "give data.labeled=SPLIT_FILE: the other train images become unlabelled"
    return DataBundle(
        labeled=source(labeled, lab_origin),
        unlabeled=unl,
        val=source(val, val_origin),
        classes=list(CLASSES),
        palette=list(PALETTE),
    )


def split_pool(cfg: DataConfig, blended: bool = False) -> tuple[list[Entry], list[Entry]]:
    """(labelled candidates, other unlabelled images) for ``dualteacher splits``."""
    return layout(cfg).scan("train", labeled=True), []
