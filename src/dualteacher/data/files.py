"""Image and mask files on disk: reading, label-id mapping and per-sample checks.

Every on-disk dataset (VOC, Cityscapes, ADE20K, the user's folders) is a sequence of ``Entry``
(image path, mask path or None, name), held compactly in an ``index.EntryTable``, read by one
``FileSource``. A dataset only says where its files are and how raw mask values map to train
ids (a look-up table); reading, checking and error messages live here, once.

``decode_image`` is the one image reader of training, evaluation, ``check`` and ``predict``:
EXIF orientation applied, deep (16-bit, float) images scaled to 8 bits by their value range.
Every image and mask reader here refuses a file whose header claims more pixels than
``data.max_image_pixels`` before decoding it (``open_image``; SECURITY.md).

``FileSource.load`` checks what is cheap to check while reading (corrupt or missing files, a
mask of another size than its image, label values that are not classes) and raises
``BadSampleError`` naming the file and the fix. ``dualteacher check`` runs the same ``load``
over every sample.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from dualteacher.config import IGNORE_INDEX, MAX_IMAGE_PIXELS, DataConfig
from dualteacher.data.base import Sample, SegSource
from dualteacher.data.index import Entry, EntryTable, scan
from dualteacher.errors import BadSampleError, DataError

# every type predict, suggest and pseudolabel read (serving.inputs): a dataset folder reads them too
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
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


# Pillow's own guard (a warning above Image.MAX_IMAGE_PIXELS, an error above twice that) is
# switched off while a file is opened, so that one stated limit applies, data.max_image_pixels;
# the lock keeps other threads of this process from opening files while it is off.
_PILLOW_GUARD = threading.Lock()
PIXEL_LIMIT_KEY = "data.max_image_pixels"


def check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image of ``width`` x ``height`` above ``max_pixels`` (0 / None: no limit),
    from its header: nothing of its pixels has been decoded or allocated yet."""
    if max_pixels and width * height > max_pixels:
        raise BadSampleError(
            path,
            f"the image claims {width}x{height} = {width * height:,} pixels, above "
            f"{PIXEL_LIMIT_KEY}={max_pixels:,} (a guard against decompression bombs: a small "
            "file that decodes to a huge image)",
            f"if the image is genuine, raise the limit, e.g. {PIXEL_LIMIT_KEY}="
            f"{width * height} (0: no limit)",
        )


@contextmanager
def open_image(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """``Image.open`` (lazy: the header only), refusing more than ``max_pixels`` pixels with a
    ``BadSampleError`` before anything decodes them."""
    with _PILLOW_GUARD:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        check_pixels(path, im.width, im.height, max_pixels)
        yield im


def identity_lut(num_classes: int, ignore_value: int = IGNORE_INDEX) -> np.ndarray:
    """Raw value -> train id table for masks that already hold class ids.

    ``0..num_classes-1`` map to themselves, ``ignore_value`` to ``IGNORE_INDEX``, anything
    else is ``INVALID``. Shape ``(max(256, ignore_value + 1),)``, int16.
    """
    lut = np.full(max(256, ignore_value + 1), INVALID, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_value] = IGNORE_INDEX
    return lut


# EXIF orientation -> the transpose that shows the image as viewers do (ImageOps.exif_transpose)
ORIENTATION = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored"),
    3: (Image.Transpose.ROTATE_180, "rotated 180 degrees"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "flipped upside down"),
    5: (Image.Transpose.TRANSPOSE, "mirrored and rotated 90 degrees"),
    6: (Image.Transpose.ROTATE_270, "rotated 90 degrees clockwise"),
    7: (Image.Transpose.TRANSVERSE, "mirrored and rotated 90 degrees"),
    8: (Image.Transpose.ROTATE_90, "rotated 90 degrees counter-clockwise"),
}
EXIF_ORIENTATION = 0x0112
MIN_LEVELS = 128  # 8-bit levels a 16-bit colour PNG must span to be read (see _colour16_png)


@dataclass(frozen=True)
class DecodedImage:
    """An image file as training, evaluation and ``predict`` see it.

    ``array`` (H, W, 3) uint8 RGB, EXIF orientation applied. ``orientation`` is the EXIF
    orientation that was applied (1: none) and ``stored_size`` the (H, W) in the file before
    it; ``depth`` says how a file of more than 8 bits per channel was scaled ("" for 8 bits).
    """

    array: np.ndarray
    orientation: int = 1
    stored_size: tuple[int, int] = (0, 0)
    depth: str = ""
    # how an 8-bit file that is not RGB was converted ("RGBA: alpha dropped"; "" for RGB)
    converted: str = ""

    @property
    def turned(self) -> str:
        """What the orientation did, for messages ("" when nothing)."""
        return ORIENTATION[self.orientation][1] if self.orientation in ORIENTATION else ""


def read_image(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied; see ``decode_image``."""
    return decode_image(path, max_pixels).array


def decode_image(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> DecodedImage:
    """Read an image file the one way every command does.

    - EXIF orientation is applied, so the image is the one viewers (and labelling tools) show;
    - 8-bit files are converted to RGB (grey, palette, CMYK, alpha dropped);
    - integer files of more than 8 bits (16-bit PNG / TIFF, grey or colour) and float TIFFs
      are scaled linearly to 0..255: values that already lie in 0..255 (integers) or 0..1
      (floats) keep that scale, other images are stretched from their own minimum to their
      maximum. A float image with NaN or infinite values, or a 16-bit colour PNG that uses too
      little of its range (Pillow reads only its high byte), is refused.

    Raises ``BadSampleError`` naming the file for a missing, unreadable or refused file, and
    for one whose header claims more than ``max_pixels`` pixels (``data.max_image_pixels``;
    0 / None: no limit).
    """
    try:
        try:
            with open_image(path, max_pixels) as im:
                bits = _bits_per_sample(im)  # before anything loads the pixels (PNG getexif)
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                stored = (im.height, im.width)
                array, depth = _pixels(im, path, bits)
                converted = "" if depth else _conversion(im)
        except UnidentifiedImageError:
            if Path(path).suffix.lower() not in (".tif", ".tiff"):
                raise
            # e.g. float RGB: not for Pillow
            array, orientation, depth = _tiff_fallback(path, max_pixels)
            stored = array.shape[:2]
            converted = ""
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
    if orientation in ORIENTATION:
        array = np.array(Image.fromarray(array).transpose(ORIENTATION[orientation][0]))
    else:
        orientation = 1
    return DecodedImage(array, orientation, stored, depth, converted)


def _conversion(im: Image.Image) -> str:
    """What converting an 8-bit image to RGB does ("" for RGB)."""
    alpha = "A" in im.getbands() or "transparency" in im.info
    if im.mode == "RGB" and not alpha:
        return ""
    return f"{im.mode} converted to RGB" + (", alpha dropped" if alpha else "")


def _pixels(im: Image.Image, path: Path, bits: int) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 pixels of an open image with ``bits`` per channel in its file, and how
    they were scaled ("" for 8 bits)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        kind = "float" if im.mode == "F" else ("16" if im.mode.startswith("I;16") else "32")
        kind = f"{kind}{'' if im.mode == 'F' else '-bit'} grey {im.format or 'image'}"
        return _scaled(np.asarray(im), path, kind)
    if bits > 8 and im.format == "TIFF":
        return _scaled(_tiff_pixels(path), path, f"{bits}-bit TIFF")
    if bits > 8:
        return _high_bytes(im, path)
    return np.array(im.convert("RGB")), ""  # a writable copy (torch.from_numpy warns otherwise)


def _bits_per_sample(im: Image.Image) -> int:
    """Bits per channel stored in the file (Pillow reduces 16-bit colour to 8 bits)."""
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return int(max(bits) if isinstance(bits, tuple) else bits)
    if im.format == "PNG" and im.tile and ";16" in str(im.tile[0][3]):
        return 16
    return 8


def _tiff_fallback(path: Path, max_pixels: int | None) -> tuple[np.ndarray, int, str]:
    """(pixels, EXIF orientation, depth note) of a TIFF Pillow cannot decode."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            # from the page's tags, before tifffile allocates the pixels
            check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
            tag = page.tags.get(EXIF_ORIENTATION)
            values = _planar_last(page.asarray())
    except BadSampleError:
        raise
    except Exception as e:  # tifffile raises its own errors for damaged files
        raise UnidentifiedImageError(f"cannot identify image file {str(path)!r} ({e})") from None
    kind = f"{'float' if values.dtype.kind == 'f' else f'{values.dtype.itemsize * 8}-bit'} TIFF"
    array, depth = _scaled(values, path, kind)
    return array, int(tag.value) if tag is not None else 1, depth


def _planar_last(values: np.ndarray) -> np.ndarray:
    if values.ndim == 3 and values.shape[0] in (3, 4) and values.shape[-1] not in (3, 4):
        return np.moveaxis(values, 0, -1)  # planar (C, H, W) storage
    return values


def _tiff_pixels(path: Path) -> np.ndarray:
    """Every bit of a TIFF Pillow would reduce to 8 bits: (H, W) or (H, W, C)."""
    return _planar_last(tifffile.imread(path))


def _scaled(values: np.ndarray, path: Path, kind: str) -> tuple[np.ndarray, str]:
    """Integer or float pixels (H, W) or (H, W, C) -> (H, W, 3) uint8, see ``decode_image``."""
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (1, 3, 4)):
        raise BadSampleError(
            path,
            f"a {kind} of shape {values.shape} is not a grey or RGB image",
            "export it as an 8-bit RGB PNG or JPEG",
        )
    if values.ndim == 3:
        values = values[..., :3] if values.shape[-1] >= 3 else values[..., 0]
    x = values.astype(np.float64)
    if not np.isfinite(x).all():
        raise BadSampleError(
            path,
            f"a {kind} with NaN or infinite values",
            "replace them (e.g. by 0) and save it again, or export an 8-bit PNG",
        )
    lo, hi = float(x.min()), float(x.max())
    top = 1.0 if values.dtype.kind == "f" else 255.0
    if lo >= 0 and hi <= top:  # already in the usual range of its type: keep the scale
        return _stretch(x, 0.0, top), f"{kind}, values {lo:g}..{hi:g}: read as 0..{top:g}"
    return _stretch(x, lo, hi), f"{kind}, values {lo:g}..{hi:g}: stretched to 0..255"


def _high_bytes(im: Image.Image, path: Path) -> tuple[np.ndarray, str]:
    """A 16-bit colour PNG: Pillow decodes only the high byte of each value. Stretched like
    other deep images when those bytes span at least ``MIN_LEVELS`` levels, else refused (it
    would come out nearly black, or banded)."""
    high = np.asarray(im.convert("RGB"))
    lo, hi = int(high.min()), int(high.max())
    if hi - lo < MIN_LEVELS:
        raise BadSampleError(
            path,
            f"a 16-bit colour PNG that uses only part of its range (high bytes {lo}..{hi}): "
            "it cannot be read without losing most of its levels",
            "convert it to 8 bits, or save it as a 16-bit TIFF (read at full depth)",
        )
    how = f"16-bit colour PNG, high bytes {lo}..{hi}: stretched to 0..255"
    return _stretch(high.astype(np.float64), lo, hi), how


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values ``lo..hi`` of (H, W) or (H, W, 3) ``x`` -> (H, W, 3) uint8 ``0..255``."""
    out = np.zeros_like(x) if hi <= lo else (x - lo) * (255.0 / (hi - lo))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out)


def read_mask(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W) integer raw label values of a single-channel mask (palette PNGs as indices; an
    RGB file whose three channels are equal is read as one channel). A mask of more than
    ``max_pixels`` pixels is refused before it is decoded, as images are."""
    try:
        with open_image(path, max_pixels) as im:
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


def _header(
    path: Path, orientation: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[tuple[int, int], int]:
    """((H, W) as stored, EXIF orientation or 1) of an image file, from its header only (a
    PNG's orientation only when its EXIF comes before the pixels: Pillow would decode them).
    More than ``max_pixels`` pixels is reported, as reading the file would."""
    try:
        with open_image(path, max_pixels) as im:
            found = 1
            if orientation and (im.format != "PNG" or "exif" in im.info):
                found = int(im.getexif().get(EXIF_ORIENTATION, 1))
            return (im.height, im.width), found
    except FileNotFoundError:
        raise BadSampleError(path, "file is missing") from None
    except _READ_ERRORS as e:
        raise BadSampleError(
            path, f"cannot read the file ({e})", "re-export it, or remove it from the set"
        ) from None


def image_notes(decoded: DecodedImage) -> tuple[tuple[str, str], ...]:
    """``(kind, text)`` of what reading did to an image beyond decoding 8-bit RGB:
    ``("depth", ...)`` for deep images, ``("orientation", ...)`` for an EXIF orientation;
    ``dualteacher check`` reports them."""
    notes = []
    if decoded.depth:
        notes.append(("depth", decoded.depth))
    if decoded.orientation != 1:
        notes.append(("orientation", f"EXIF orientation {decoded.orientation}: {decoded.turned}"))
    if decoded.converted:
        notes.append(("mode", decoded.converted))
    return tuple(notes)


def mask_size_error(
    mask: Path, mask_size: tuple[int, int], image: Path, decoded: DecodedImage
) -> BadSampleError:
    """The error for a mask whose size is not its image's, with the fix that applies."""
    (h, w), (mh, mw) = decoded.array.shape[:2], mask_size
    if decoded.orientation != 1 and tuple(mask_size) == tuple(decoded.stored_size):
        return BadSampleError(
            mask,
            f"the mask is {mw}x{mh}, the size of its image {image} as stored, but that image "
            f"has EXIF orientation {decoded.orientation} ({decoded.turned}) and is read as "
            f"viewers show it, {w}x{h}",
            "turn the mask the same way (PIL.ImageOps.exif_transpose on the image shows how), "
            "or remove the orientation tag from the image; do not resize the mask",
        )
    return BadSampleError(
        mask,
        f"the mask is {mw}x{mh} but its image {image} is {w}x{h}"
        + (f" (as viewers show it: EXIF orientation {decoded.turned})" if decoded.turned else ""),
        "a mask must have its image's size: re-export it, or resize it with "
        "nearest-neighbour interpolation",
    )


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

    ``max_pixels`` (``data.max_image_pixels``, set by ``build_data``) bounds every image and
    mask read.
    """

    max_pixels: int | None = MAX_IMAGE_PIXELS

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
        decoded = decode_image(e.image, self.max_pixels)
        image, notes = decoded.array, image_notes(decoded)
        if e.mask is None:
            return Sample(image, None, e.name, notes)
        raw = read_mask(e.mask, self.max_pixels)
        if raw.shape != image.shape[:2]:
            raise mask_size_error(e.mask, raw.shape[:2], e.image, decoded)
        return Sample(image, self.labels(e, raw), e.name, notes)

    def labels(self, entry: Entry, raw: np.ndarray | None = None) -> np.ndarray:
        """Train ids of ``entry``'s mask (``raw``: its values, when already read); label
        values that are not classes raise ``BadSampleError`` naming the file and the values."""
        if raw is None:
            raw = read_mask(entry.mask, self.max_pixels)
        return map_labels(raw, self.lut_for(entry.mask), entry.mask, self.classes_hint)

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

    def start_problems(self) -> list[BadSampleError]:
        """What training checks in its validation (and selection) set before its first step,
        instead of failing at the first validation: files that are not images and masks whose
        size is not their image's as viewers show it (from the headers: no image pixel is
        decoded), and masks with label values that are not classes (each mask is decoded and
        mapped as ``load`` does: a few milliseconds a mask)."""
        out = []
        for i, e in enumerate(self.entries):
            try:
                size, orientation = _header(e.image, True, self.max_pixels)
                if e.mask is not None:
                    shown = size[::-1] if orientation in (5, 6, 7, 8) else size
                    if _header(e.mask, max_pixels=self.max_pixels)[0] != shown:
                        self.load(i)  # confirm by reading it (a PNG's EXIF may follow its pixels)
                    else:
                        self.labels(e)
            except BadSampleError as err:
                out.append(err)
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
    """First token of every non-empty, non-comment line (an id list like VOC's train.txt).

    An id names files inside the dataset (``JPEGImages/<id>.jpg``): one with a path separator
    (``../../x``) could lead outside it, so it is refused naming the file and line."""
    ids = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if "/" in tokens[0] or "\\" in tokens[0]:
            raise DataError(
                f"{path}, line {lineno}: {tokens[0]} is no sample id (ids are file names "
                "without folders, e.g. 2007_000032); fix the line or restore the dataset's file"
            )
        ids.append(tokens[0])
    return ids


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
