"""Labels from annotation tools: ``data.name=coco``, ``cvat`` and ``labelstudio``.

Layout (``data.annotations.*`` names other places)::

    ROOT/train.json | train.zip | train/   the labelled images' export (data.annotations.train)
    ROOT/val.json   | val.zip   | val/     the validation images' export (data.annotations.val)
    ROOT/images/...                        the images the exports name (data.annotations.images)
    ROOT/unlabeled/...                     optional: more images without labels

The formats, class order, ignore regions and the overlap rule are ``data.annotations``'s
(decoded there, in one module with the writers). Every image of ``ROOT/images/`` that neither
export labels is unlabelled, and so is every image of ``ROOT/unlabeled/``: the folder
dataset's scans (``data.files.scan_images``, ``data.folder.unlabeled_dir``), its look-up table
and its ``FileSource`` checks (missing files, EXIF, pixel limit) apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from dualteacher.config import DataConfig
from dualteacher.data.annotations import (
    CocoExport,
    CvatExport,
    Labelled,
    LabelStudioExport,
    class_order,
)
from dualteacher.data.base import DataBundle, Sample
from dualteacher.data.files import (
    Entry,
    FileSource,
    decode_image,
    default_palette,
    exclude,
    identity_lut,
    image_notes,
    scan_images,
)
from dualteacher.data.folder import unlabeled_dir
from dualteacher.data.index import EntryTable
from dualteacher.errors import BadSampleError, ConfigError, DataError

EXPORTS: dict[str, tuple[type, str]] = {  # data.name -> (reader, default export name)
    "coco": (CocoExport, "{}.json"),
    "cvat": (CvatExport, "{}"),
    "labelstudio": (LabelStudioExport, "{}.json"),
}


class AnnotatedSource(FileSource):
    """Labelled images of an export: the image read as every ``FileSource`` reads it, the
    labels decoded from the export (``Labelled`` items, in ``entries`` order). A label that
    cannot be decoded raises ``BadSampleError`` naming the export and the entry."""

    def __init__(self, items: list[Labelled], decode: Callable, num_classes: int, origin: str):
        entries = [Entry(it.image, None, it.name) for it in items]
        hint = f"0..{num_classes - 1} and ignore 255"
        super().__init__(entries, identity_lut(num_classes), hint, origin)
        self.items, self.decode = items, decode

    def load(self, index: int) -> Sample:
        item = self.items[index]
        decoded = decode_image(item.image, self.max_pixels)
        labels = self.decode(item, decoded.array.shape[:2])
        return Sample(decoded.array, labels, item.name, image_notes(decoded))

    def header_problems(self) -> list[BadSampleError]:
        # The labels are in the export, not in a file whose header says its size: read them.
        out = []
        for i in range(len(self)):
            try:
                self.load(i)
            except BadSampleError as e:
                out.append(e)
        return out

    def describe(self, index: int) -> str:
        return f"{self.items[index].image} ({self.items[index].where})"


def _export(cfg: DataConfig, root: Path, which: str) -> Path:
    given = getattr(cfg.annotations, which)
    default = EXPORTS[cfg.name][1].format(which)
    path = root / (given or default)
    if cfg.name == "cvat" and not path.exists() and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    if not path.exists():
        raise DataError(
            f"{path} not found: data.name={cfg.name} reads the {which} set's export there "
            f"(data.annotations.{which}=PATH, relative to data.root; docs/data.md)"
        )
    return path


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is not set: give data.root=ROOT for data.name={cfg.name}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root}: no such directory")
    for key in ("labeled", "unlabeled", "val", "split"):
        if getattr(cfg, key):
            raise ConfigError(
                f"data.{key} is not used by data.name={cfg.name}: its sets are its exports "
                "(data.annotations.train, data.annotations.val) and the images they do not name"
            )
    return root


def _exports(cfg: DataConfig):
    root = _root(cfg)
    reader = EXPORTS[cfg.name][0]
    images = root / cfg.annotations.images
    ignore = cfg.annotations.ignore_label
    train = reader(_export(cfg, root, "train"), images, ignore)
    val = reader(_export(cfg, root, "val"), images, ignore)
    where = f"{train.path} / {val.path}"
    classes = class_order(train.found + val.found, cfg.annotations.classes, ignore, where)
    return root, images, train, val, classes


def _images(entries: Iterable[Entry]) -> EntryTable:
    return EntryTable.from_entries(entries)


def build(cfg: DataConfig) -> DataBundle:
    """The labelled, validation and unlabelled sets of an annotation tool's exports."""
    root, images, train, val, classes = _exports(cfg)
    k = len(classes)
    if k > 255:
        raise DataError(f"{train.path}: {k} classes; at most 255 are supported")
    lab_items, val_items = train.items(classes), val.items(classes)
    lab = AnnotatedSource(lab_items, train.labels, k, f"{train.path.name} ({cfg.name})")
    lab.empty_hint = f"label some images in {train.path}"
    named = _images(Entry(it.image, None, it.name) for it in lab_items + val_items)
    unlabeled = exclude(scan_images(images), named) + unlabeled_dir(root)
    origin = f"{cfg.annotations.images}/ images no export labels, and unlabeled/"
    unl = FileSource(unlabeled, identity_lut(k), "", origin)
    unl.empty_hint = (
        f"put images without labels in {root / 'unlabeled'} (or in {images} without an entry "
        "in the exports)"
    )
    palette = train.palette(classes) if hasattr(train, "palette") else default_palette(k)
    return DataBundle(
        labeled=lab,
        unlabeled=unl,
        val=AnnotatedSource(val_items, val.labels, k, f"{val.path.name} ({cfg.name})"),
        classes=classes,
        palette=palette,
    )


__all__ = ["EXPORTS", "AnnotatedSource", "build"]
