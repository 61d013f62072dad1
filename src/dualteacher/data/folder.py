"""The user's own data (``data.name=folder data.root=ROOT``).

Layout::

    ROOT/classes.yaml          class names (and optional colours, ignore value)
    ROOT/train/images/a.jpg    .jpg .jpeg .png .bmp .tif .tiff .webp .gif .ppm, sub-folders
    ROOT/train/masks/a.png     same name, single-channel PNG of class ids (mode L or P)
    ROOT/val/images/...        validation images, every one with a mask
    ROOT/val/masks/...
    ROOT/unlabeled/...         optional: images with no masks at all (sub-folders allowed)

``classes.yaml``::

    classes: [background, cat, dog]          # or a list of {name: cat, color: [255, 0, 0]}
    ignore_index: 255                        # optional: mask value that is not trained on
    palette: [[0, 0, 0], [255, 0, 0], ...]   # optional colours (else from `color`, else VOC's)

Without split files, every train image that has a mask is labelled; the train images without
a mask and everything under ``ROOT/unlabeled/`` are unlabelled. ``data.labeled`` /
``data.unlabeled`` split files may list names (``a``, ``sub/b``: paths under ``images/`` or
``unlabeled/`` without extension) or paths relative to ROOT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from dualteacher.config import IGNORE_INDEX, DataConfig, yaml_problem
from dualteacher.data.base import DataBundle
from dualteacher.data.files import (
    IMAGE_EXTS,
    Entry,
    FileSource,
    default_palette,
    exclude,
    first_existing,
    identity_lut,
    scan_files,
    scan_images,
    without_masks,
)
from dualteacher.data.index import EntryTable
from dualteacher.data.splits import read_split
from dualteacher.errors import BadSampleError, DataError

EXAMPLE = "classes: [background, cat, dog]   (or a list of {name: cat, color: [255, 0, 0]})"
TREE = (
    "ROOT/classes.yaml, ROOT/train/images/ + ROOT/train/masks/ (same names, masks .png), "
    "ROOT/val/images/ + ROOT/val/masks/, optionally ROOT/unlabeled/"
)


def _colour(value, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)
    ):
        raise DataError(
            f"{where}: a colour is three integers 0..255 like [255, 0, 0], got {value!r}"
        )
    return (value[0], value[1], value[2])


def read_classes(path: Path) -> tuple[list[str], list[tuple[int, int, int]], int]:
    """(names, palette, ignore value) from ``classes.yaml``; ``DataError`` when malformed."""
    if not path.is_file():
        raise DataError(f"{path} not found: the folder dataset needs it, e.g.\n  {EXAMPLE}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise DataError(f"{path} must have a non-empty list 'classes', e.g.\n  {EXAMPLE}")
    unknown = set(doc) - {"classes", "ignore_index", "palette"}
    if unknown:
        raise DataError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: classes, ignore_index, palette"
        )
    names, colours = [], []
    for i, item in enumerate(doc["classes"]):
        if isinstance(item, str):
            names.append(item)
            colours.append(None)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
            colours.append(
                _colour(item["color"], f"{path}, class {item['name']}") if "color" in item else None
            )
        else:
            raise DataError(f"{path}: class {i} must be a name or {{name, color}}, got {item!r}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names must be unique")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: at most {IGNORE_INDEX} classes are supported, got {len(names)}")
    ignore = doc.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not len(names) <= ignore <= 65535:
        raise DataError(
            f"{path}: ignore_index={ignore!r} must be an integer that is no class id "
            f"(>= {len(names)}), e.g. 255"
        )
    if "palette" in doc:
        given = doc["palette"]
        if not isinstance(given, list) or len(given) != len(names):
            raise DataError(f"{path}: palette must list one colour per class ({len(names)})")
        palette = [_colour(c, f"{path}, palette") for c in given]
    else:
        palette = [c or d for c, d in zip(colours, default_palette(len(names)))]
    return names, palette, ignore


class FolderLayout:
    def __init__(self, root: Path):
        self.root = root

    def mask_of(self, image: Path) -> Path | None:
        """``ROOT/<set>/masks/<name>.png`` for ``ROOT/<set>/images/<name>.<ext>``."""
        for split in ("train", "val"):
            images = self.root / split / "images"
            if image.is_relative_to(images):
                return self.root / split / "masks" / image.relative_to(images).with_suffix(".png")
        return None

    def from_id(self, name: str, labeled: bool) -> Entry:
        folders = [
            self.root / "train" / "images",
            self.root / "val" / "images",
            self.root / "unlabeled",
        ]
        candidates = [f / f"{name}{ext}" for f in folders for ext in IMAGE_EXTS]
        image = first_existing(*candidates)
        return Entry(image, self.mask_of(image) if labeled else None, name)

    def from_paths(self, image: Path, mask: Path | None) -> Entry:
        return Entry(image, mask if mask is not None else self.mask_of(image), image.stem)

    def scan_split(self, split: str) -> tuple[EntryTable, EntryTable, list[BadSampleError]]:
        """(images with a mask, images without, masks without an image) of ``ROOT/<split>``."""
        images = scan_images(self.root / split / "images")
        listing = scan_files(self.root / split / "masks")
        masks = dict(zip(listing.iter_names(), listing.iter_images()))  # name -> mask path
        if not masks:
            return images.take([]), images, []
        labeled, masks_of = np.zeros(len(images), bool), []
        for i, name in enumerate(images.iter_names()):
            mask = masks.pop(name, None)
            if mask is not None:
                labeled[i] = True
                masks_of.append(mask)
        problems = [
            BadSampleError(m, "masks must be .png files (lossless)")
            for m in masks_of
            if not m.lower().endswith(".png")
        ]
        problems += [
            BadSampleError(
                mask,
                f"mask without an image: no {name}.<ext> in {self.root / split / 'images'} "
                f"(image types: {' '.join(IMAGE_EXTS)})",
            )
            for name, mask in masks.items()  # what is left: no image of that name
        ]
        return images.take(labeled).with_masks(masks_of), images.take(~labeled), problems


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(
            f"data.root is not set: give data.root=ROOT for data.name=folder, with {TREE}"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root}: no such directory. Expected {TREE}")
    if not (root / "train" / "images").is_dir():
        raise DataError(f"{root / 'train' / 'images'} not found. Expected {TREE}")
    return root


def layout(cfg: DataConfig) -> FolderLayout:
    """Where the folder dataset at ``data.root`` keeps its files (reads split files)."""
    return FolderLayout(_root(cfg))


def unlabeled_dir(root: Path) -> EntryTable:
    """The images of ``ROOT/unlabeled/``, named ``unlabeled/<name>``."""
    return scan_images(root / "unlabeled").renamed("unlabeled/")


def build(cfg: DataConfig) -> DataBundle:
    """The folder dataset with the defaults described in the module docstring."""
    root = _root(cfg)
    classes, palette, ignore = read_classes(root / "classes.yaml")
    lay = FolderLayout(root)
    train_x, train_u, problems = lay.scan_split("train")
    extra_u = unlabeled_dir(root)
    if cfg.labeled:
        labeled, lab_origin = read_split(cfg.labeled, cfg, lay, True, "data.labeled"), cfg.labeled
    else:
        labeled, lab_origin = train_x, "train/ images with a mask"
    if cfg.unlabeled:
        unlabeled = read_split(cfg.unlabeled, cfg, lay, False, "data.unlabeled")
        unl_origin = cfg.unlabeled
    elif not cfg.labeled:  # the labelled set is train_x: the others are unlabelled
        unlabeled = train_u + extra_u
        unl_origin = "train/ images without a mask, and unlabeled/"
    else:
        unlabeled = exclude(without_masks(train_x) + train_u + extra_u, labeled)
        unl_origin = "train/ and unlabeled/ images not in data.labeled"
    if cfg.val:
        val, val_origin, val_problems = read_split(cfg.val, cfg, lay, True, "data.val"), cfg.val, []
    else:
        if not (root / "val" / "images").is_dir():
            raise DataError(
                f"{root / 'val' / 'images'} not found: the folder dataset needs validation images "
                f"with masks in val/images/ and val/masks/ (or a split file data.val=...)"
            )
        val_x, val_u, val_problems = lay.scan_split("val")
        val_problems += [
            BadSampleError(
                root / "val" / "masks" / f"{e.name}.png",
                f"mask of validation image {e.image} is missing",
            )
            for e in val_u
        ]
        val, val_origin = val_x, "val/"
    hint = f"0..{len(classes) - 1} and ignore {ignore}, from classes.yaml"
    lut = identity_lut(len(classes), ignore)
    unl = FileSource(unlabeled, lut, hint, unl_origin)
    unl.empty_hint = (
        "put images without masks in ROOT/unlabeled/ (or in train/images/ without a mask)"
    )
    lab = FileSource(labeled, lut, hint, lab_origin, problems)
    lab.empty_hint = "put masks with the images' names in ROOT/train/masks/"
    return DataBundle(
        labeled=lab,
        unlabeled=unl,
        val=FileSource(val, lut, hint, val_origin, val_problems),
        classes=classes,
        palette=palette,
    )


def split_pool(cfg: DataConfig, blended: bool = False) -> tuple[EntryTable, EntryTable]:
    """(labelled candidates, other unlabelled images) for ``dualteacher splits``."""
    root = _root(cfg)
    train_x, train_u, _ = FolderLayout(root).scan_split("train")
    return train_x, train_u + unlabeled_dir(root)
