"""Image and mask files on disk: reading, label-id mapping and per-sample checks.

Every on-disk dataset (VOC, Cityscapes, ADE20K, the user's folders) is a sequence of ``Entry``
(image path, mask path or None, name), held compactly in an ``index.EntryTable``, read by one
``FileSource``. A dataset only says where its files are and how raw mask values map to train
ids (a look-up table); reading, checking and error messages live here, once.

``FileSource.load`` checks what is cheap to check while reading (corrupt or missing files, a
mask of another size than its image, label values that are not classes) and raises
``BadSampleError`` naming the file and the fix. ``dualteacher check`` runs the same ``load``
over every sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dualteacher.config import IGNORE_INDEX, DataConfig
from dualteacher.data.base import Sample, SegSource
from dualteacher.data.index import Entry, EntryTable, scan
from dualteacher.errors import BadSampleError, DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
INVALID = -1  # look-up table value of a raw mask value that is neither a class nor ignore
# PIL modes of single-channel masks; "P" (palette) is read as its indices, never as colours.
MASK_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")

_READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


def identity_lut(num_classes: int, ignore_value: int = IGNORE_INDEX) -> np.ndarray:
    """Raw value -> train id table for masks that already hold class ids.

    ``0..num_classes-1`` map to themselves, ``ignore_value`` to ``IGNORE_INDEX``, anything
    else is ``INVALID``. Shape ``(max(256, ignore_value + 1),)``, int16.
    """
    lut = np.full(max(256, ignore_value + 1), INVALID, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_value] = IGNORE_INDEX
    return lut


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Raises ``BadSampleError`` for a missing or unreadable file."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # writable (torch.from_numpy warns otherwise)
    except FileNotFoundError:
        raise BadSampleError(
            path, "image file is missing", "restore it, or remove it from the split file"
        ) from None
    except _READ_ERRORS as e:
        raise BadSampleError(
            path,
            f"cannot read the image ({e})",
            "re-download or re-export it, or remove it (and its mask) from the dataset",
        ) from None


def read_mask(path: Path) -> np.ndarray:
    """(H, W) integer raw label values of a single-channel mask (palette PNGs as indices; an
    RGB file whose three channels are equal is read as one channel)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            mask = np.asarray(im)
    except FileNotFoundError:
        raise BadSampleError(
            path, "mask file is missing", "restore it, or remove the image from the labelled split"
        ) from None
    except _READ_ERRORS as e:
        raise BadSampleError(path, f"cannot read the mask ({e})", "re-export it as a PNG") from None
    if mode == "RGB" and (mask == mask[..., :1]).all():
        mask = mask[..., 0]  # class ids saved in three equal channels (e.g. by OpenCV)
    elif mode not in MASK_MODES:
        raise BadSampleError(
            path,
            f"the mask is a {mode} image of colours, not of class ids",
            "masks must be single-channel PNGs of class ids (PIL mode L or P): save the class "
            "index of each pixel, not its colour",
        )
    return mask.astype(np.uint8) if mask.dtype == bool else mask


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path, classes_hint: str) -> np.ndarray:
    """Apply the raw -> train id table ``lut``; values it marks ``INVALID`` raise."""
    if raw.dtype != np.uint8:  # 16/32-bit PNGs: values past the table are invalid too
        raw = raw.astype(np.int64)
        outside = (raw < 0) | (raw >= len(lut))
        if outside.any():
            _bad_values(path, np.unique(raw[outside]), classes_hint)
    mapped = lut[raw]
    bad = mapped == INVALID
    if bad.any():
        _bad_values(path, np.unique(raw[bad]), classes_hint)
    return mapped.astype(np.uint8)


def _bad_values(path: Path, values: np.ndarray, classes_hint: str):
    shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    raise BadSampleError(
        path,
        f"label values {shown} are not classes of this dataset ({classes_hint})",
        "masks must hold class ids; a mask saved as colours, or resized with bilinear "
        "instead of nearest-neighbour interpolation, has other values: re-export it",
    )


class FileSource(SegSource):
    """Samples read from image / mask files, with the checks described in the module docstring.

    Args:
        entries: the files, in order (an ``EntryTable``, or any ``Entry`` iterable).
        lut: raw mask value -> train id table (``INVALID`` where a value is not allowed).
        classes_hint: what valid raw values are, for messages (e.g. "0..20, ignore 255").
        origin: where this set comes from, for messages and ``dualteacher check``.
        problems: problems found while listing the files (e.g. a mask without its image).
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        lut: np.ndarray,
        classes_hint: str,
        origin: str,
        problems: Iterable[BadSampleError] = (),
    ):
        self.entries = EntryTable.from_entries(entries)
        self.lut, self.classes_hint, self.origin = lut, classes_hint, origin
        self.problems = list(problems)  # found while listing files (e.g. a mask without image)
        self.empty_hint = ""  # how to fill this set when it is empty, for error messages

    def __len__(self) -> int:
        return len(self.entries)

    def lut_for(self, mask_path: Path) -> np.ndarray:
        """Table for one mask file (Cityscapes picks it by file name)."""
        return self.lut

    def load(self, index: int) -> Sample:
        e = self.entries[index]
        image = read_image(e.image)
        if e.mask is None:
            return Sample(image, None, e.name)
        raw = read_mask(e.mask)
        if raw.shape != image.shape[:2]:
            (h, w), (mh, mw) = image.shape[:2], raw.shape[:2]
            raise BadSampleError(
                e.mask,
                f"the mask is {mw}x{mh} but its image {e.image} is {w}x{h}",
                "a mask must have its image's size: re-export it, or resize it with "
                "nearest-neighbour interpolation",
            )
        return Sample(
            image, map_labels(raw, self.lut_for(e.mask), e.mask, self.classes_hint), e.name
        )

    def file_problems(self, indices: Iterable[int] | None = None) -> list[BadSampleError]:
        """Files of this set (of the samples ``indices``; None: all) that do not exist (one
        ``stat`` each, nothing is read), and the problems found while listing the files."""
        out = list(self.problems)
        for i in range(len(self.entries)) if indices is None else indices:
            e = self.entries[i]
            if not e.image.is_file():
                out.append(BadSampleError(e.image, "image file is missing"))
            if e.mask is not None and not e.mask.is_file():
                out.append(BadSampleError(e.mask, f"mask of {e.image.name} is missing"))
        return out

    def describe(self, index: int) -> str:
        """The files of sample ``index``, for reports."""
        e = self.entries[index]
        return str(e.image) if e.mask is None else f"{e.image} {e.mask}"


def find_dataset_dir(
    cfg: DataConfig, candidates: Iterable[str], markers: Iterable[str], expected: str
) -> Path:
    """The dataset directory: ``data.root`` or one of ``candidates`` under it that holds all
    ``markers`` (sub-directories). Raises ``DataError`` saying what is expected there."""
    if not cfg.root:
        raise DataError(
            f"data.root is not set: give data.root=PATH for data.name={cfg.name}, PATH holding "
            f"{expected}"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root}: no such directory. It should hold {expected}")
    markers = list(markers)
    tried = []
    for sub in ("", *candidates):
        d = root / sub if sub else root
        tried.append(str(d))
        if all((d / m).is_dir() for m in markers):
            return d
    raise DataError(
        f"data.root={cfg.root}: found no {' and '.join(m + '/' for m in markers)} in "
        f"{', '.join(tried)}. Expected {expected}"
    )


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: {what}")
    return path


def read_id_list(path: Path) -> list[str]:
    """First token of every non-empty, non-comment line (an id list like VOC's train.txt)."""
    lines = (ln.split() for ln in path.read_text().splitlines())
    return [t[0] for t in lines if t and not t[0].startswith("#")]


def scan_images(folder: Path) -> EntryTable:
    """Images under ``folder`` (sub-folders too), named by their path relative to it without
    extension, "/"-separated; through the run's scan index (``index.ScanIndex``), so a scan
    is done once. Hidden files and files of other types are skipped; no file is opened or
    ``stat``-ed. Two images with the same name (``a.jpg`` and ``a.png``) raise ``DataError``.
    """
    return scan(folder, IMAGE_EXTS) if folder.is_dir() else EntryTable.empty()


def scan_files(folder: Path) -> EntryTable:
    """Every non-hidden file under ``folder`` (masks of any type), named as ``scan_images``."""
    return scan(folder, None) if folder.is_dir() else EntryTable.empty()


def without_masks(entries: Iterable[Entry]) -> EntryTable:
    return EntryTable.from_entries(entries).without_masks()


def image_key(path: Path | str) -> str:
    """Comparable form of an image path (no file-system access)."""
    return os.path.normcase(os.path.abspath(path))


def exclude(entries: Iterable[Entry], taken: Iterable[Entry]) -> EntryTable:
    """``entries`` whose image is not the image of any entry in ``taken``."""
    return EntryTable.from_entries(entries).drop_images(taken)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The VOC colour map (bits of the class id spread over the RGB channels)."""
    out = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out.append((r, g, b))
    return out


def first_existing(*paths: Path) -> Path:
    """The first of ``paths`` that is a file, else the first (reported missing later)."""
    return next((p for p in paths if p.is_file()), paths[0])
