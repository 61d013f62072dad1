"""PASCAL VOC 2012 (``data.name=voc``): 21 classes, 255 = ignore (object borders).

Layout under ``data.root`` (or ``data.root/VOC2012``, ``data.root/VOCdevkit/VOC2012``)::

    JPEGImages/2007_000032.jpg
    SegmentationClass/2007_000032.png      palette PNGs (read as class indices)
    SegmentationClassAug/2007_000032.png   optional: the 10,582 SBD-augmented masks
    ImageSets/Segmentation/train.txt       1,464 ids
    ImageSets/Segmentation/val.txt         1,449 ids
    ImageSets/Segmentation/train_aug.txt   optional: the 10,582 ids (trainaug.txt / aug.txt)

A mask is taken from ``SegmentationClass/`` when the file is there (the original fine
annotation), else from ``SegmentationClassAug/``. Defaults without split files:

- labelled: ``train.txt`` (the classic 1,464);
- unlabelled: every other image of the augmented set (``train_aug.txt`` if present, else the
  images with a ``SegmentationClassAug/`` mask), never a val image;
- val: ``val.txt``.

The classic protocol (92 ... 1464 labels) and the blended one (1/16 ... 1/2 of 10,582) are
chosen with ``data.labeled`` / ``data.unlabeled`` split files (UniMatch's or U2PL's).
"""

from __future__ import annotations

from pathlib import Path

from dualteacher.config import DataConfig
from dualteacher.data.base import DataBundle
from dualteacher.data.files import (
    Entry,
    FileSource,
    default_palette,
    exclude,
    find_dataset_dir,
    first_existing,
    identity_lut,
    read_id_list,
    require_file,
    without_masks,
)
from dualteacher.data.splits import read_split

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
EXPECTED = (
    "the VOC2012 folder: JPEGImages/, SegmentationClass/ and/or SegmentationClassAug/, "
    "ImageSets/Segmentation/{train,val}.txt"
)
AUG_LISTS = ("train_aug.txt", "trainaug.txt", "aug.txt")


class VocLayout:
    def __init__(self, root: Path):
        self.root = root
        self.sets = root / "ImageSets" / "Segmentation"

    def mask_of(self, name: str) -> Path:
        return first_existing(
            self.root / "SegmentationClass" / f"{name}.png",
            self.root / "SegmentationClassAug" / f"{name}.png",
        )

    def from_id(self, name: str, labeled: bool) -> Entry:
        mask = self.mask_of(name) if labeled else None
        return Entry(self.root / "JPEGImages" / f"{name}.jpg", mask, name)

    def from_paths(self, image: Path, mask: Path | None) -> Entry:
        name = image.stem
        if mask is None or not mask.is_file():
            # UniMatch's lists name SegmentationClass/ for every image, because its set-up
            # copies the augmented masks there; ours reads them where they are.
            mask = first_existing(*([mask] if mask else []), self.mask_of(name))
        return Entry(image, mask, name)

    def aug_ids(self) -> list[str]:
        """Ids of the augmented training set (10,582 in the standard set-up)."""
        for name in AUG_LISTS:
            if (self.sets / name).is_file():
                return read_id_list(self.sets / name)
        aug = self.root / "SegmentationClassAug"
        return sorted(p.stem for p in aug.glob("*.png")) if aug.is_dir() else []

    def train_ids(self) -> list[str]:
        return read_id_list(
            require_file(
                self.sets / "train.txt",
                "VOC's labelled training list (1,464 ids); or give data.labeled=SPLIT_FILE",
            )
        )

    def val_ids(self) -> list[str]:
        return read_id_list(
            require_file(
                self.sets / "val.txt",
                "VOC's validation list (1,449 ids); or give data.val=SPLIT_FILE",
            )
        )

    def pool(self) -> list[Entry]:
        """Every training image (classic train.txt and the augmented set), val excluded."""
        ids = dict.fromkeys(self.train_ids() + self.aug_ids())
        val = set(self.val_ids()) if (self.sets / "val.txt").is_file() else set()
        return [self.from_id(i, labeled=False) for i in ids if i not in val]


def layout(cfg: DataConfig) -> VocLayout:
    return VocLayout(
        find_dataset_dir(cfg, ["VOC2012", "VOCdevkit/VOC2012"], ["JPEGImages"], EXPECTED)
    )


def source(entries: list[Entry], origin: str) -> FileSource:
    return FileSource(entries, identity_lut(len(CLASSES)), "0..20, ignore 255", origin)


def build(cfg: DataConfig) -> DataBundle:
    """VOC 2012 with the defaults described in the module docstring."""
    lay = layout(cfg)
    if cfg.labeled:
        labeled = read_split(cfg.labeled, cfg, lay, True, "data.labeled")
        lab_origin = cfg.labeled
    else:
        labeled = [lay.from_id(i, labeled=True) for i in lay.train_ids()]
        lab_origin = "ImageSets/Segmentation/train.txt"
    if cfg.val:
        val, val_origin = read_split(cfg.val, cfg, lay, True, "data.val"), cfg.val
    else:
        val = [lay.from_id(i, labeled=True) for i in lay.val_ids()]
        val_origin = "ImageSets/Segmentation/val.txt"
    if cfg.unlabeled:
        unlabeled = read_split(cfg.unlabeled, cfg, lay, False, "data.unlabeled")
        unl_origin = cfg.unlabeled
    else:
        unlabeled = without_masks(exclude(lay.pool(), labeled + val))
        unl_origin = "augmented set (train_aug.txt / SegmentationClassAug) minus labelled"
    return DataBundle(
        labeled=source(labeled, lab_origin),
        unlabeled=source(unlabeled, unl_origin),
        val=source(val, val_origin),
        classes=list(CLASSES),
        palette=default_palette(len(CLASSES)),
    )


def split_pool(cfg: DataConfig, blended: bool) -> tuple[list[Entry], list[Entry]]:
    """(labelled candidates, other unlabelled images) for ``dualteacher splits``.

    Classic: candidates are ``train.txt``'s 1,464; the rest of the augmented set stays
    unlabelled. Blended: candidates are the whole augmented set.
    """
    lay = layout(cfg)
    pool = lay.pool()
    with_masks = [lay.from_id(e.name, labeled=True) for e in pool]
    if blended:
        return with_masks, []
    train = set(lay.train_ids())
    return [e for e in with_masks if e.name in train], [e for e in pool if e.name not in train]
