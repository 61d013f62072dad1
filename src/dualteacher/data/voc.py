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
  images with a ``SegmentationClassAug/`` mask), never a val image. Without SBD (only the
  official VOC2012 archive: neither of the two), every other image of ``JPEGImages/`` (about
  14k of its 17,125 have no mask), never a val image;
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
from dualteacher.errors import DataError

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

    def aug_set(self) -> tuple[list[str], str]:
        """Ids of the augmented training set (10,582 in the standard set-up) and what lists
        them; no ids when SBD is not there."""
        for name in AUG_LISTS:
            if (self.sets / name).is_file():
                return read_id_list(self.sets / name), name
        aug = self.root / "SegmentationClassAug"
        ids = sorted(p.stem for p in aug.glob("*.png")) if aug.is_dir() else []
        return ids, "SegmentationClassAug/"

    def jpeg_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "JPEGImages").glob("*.jpg"))

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

    def _no_val(self, ids: list[str]) -> list[Entry]:
        val = set(self.val_ids()) if (self.sets / "val.txt").is_file() else set()
        return [self.from_id(i, labeled=False) for i in dict.fromkeys(ids) if i not in val]

    def pool(self) -> list[Entry]:
        """Every training image with a mask (classic train.txt and the augmented set), val
        excluded."""
        return self._no_val(self.train_ids() + self.aug_set()[0])

    def unlabeled_pool(self) -> tuple[list[Entry], str]:
        """Training images that may be unlabelled (val excluded) and where they come from: the
        augmented set, or without SBD every image of JPEGImages/ (the official archive's
        17,125 hold ~14k detection / classification images that have no mask)."""
        aug, listed_in = self.aug_set()
        if aug:
            return self._no_val(
                self.train_ids() + aug
            ), f"SBD set ({listed_in}) minus labelled and val"
        origin = (
            "JPEGImages/ minus labelled and val (no SBD: no train_aug.txt or SegmentationClassAug/)"
        )
        return self._no_val(self.jpeg_ids()), origin


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
        pool, unl_origin = lay.unlabeled_pool()
        unlabeled = without_masks(exclude(pool, labeled + val))
    unl = source(unlabeled, unl_origin)
    unl.empty_hint = (
        "give data.unlabeled=SPLIT_FILE, or add SBD's SegmentationClassAug/ (or train_aug.txt) "
        "or images to JPEGImages/ that are neither labelled nor validation"
    )
    return DataBundle(
        labeled=source(labeled, lab_origin),
        unlabeled=unl,
        val=source(val, val_origin),
        classes=list(CLASSES),
        palette=default_palette(len(CLASSES)),
    )


def split_pool(cfg: DataConfig, blended: bool) -> tuple[list[Entry], list[Entry]]:
    """(labelled candidates, other unlabelled images) for ``dualteacher splits``.

    Classic: candidates are ``train.txt``'s 1,464; the rest of the unlabelled pool (the
    augmented set, or without SBD JPEGImages/) stays unlabelled. Blended: candidates are the
    whole augmented set, which needs SBD's masks.
    """
    lay = layout(cfg)
    if blended:
        if not lay.aug_set()[0]:
            raise DataError(
                f"the blended VOC protocol draws from SBD's 10,582 masks, but {lay.root} has no "
                "SegmentationClassAug/ (or ImageSets/Segmentation/train_aug.txt): add them, or "
                "drop --blended to draw from train.txt"
            )
        return [lay.from_id(e.name, labeled=True) for e in lay.pool()], []
    train = set(lay.train_ids())
    candidates = [lay.from_id(e.name, labeled=True) for e in lay.pool() if e.name in train]
    return candidates, [e for e in lay.unlabeled_pool()[0] if e.name not in train]
