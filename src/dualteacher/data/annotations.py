"""Annotation tools' formats, both ways, in one place: COCO JSON (polygons and RLE), CVAT
"Segmentation mask 1.1" exports (zip or folder) and Label Studio brush JSON.

In (``data.name=coco | cvat | labelstudio``, built by ``data/annotated.py``): an export is
opened as a ``CocoExport``, ``CvatExport`` or ``LabelStudioExport``; each lists its labelled
images as ``Labelled`` items and the class names it uses (``found``), and ``labels(item,
(h, w))`` decodes one image's mask of class ids, 255 = ignore. Out (``suggest`` /
``pseudolabel --format``): ``coco_image``, ``cvat_mask`` and ``labelstudio_task`` turn
``Prediction`` masks (class ids, 255 = ignore) and their scores into each tool's import format.

The formats' own code does the encoding both ways: ``pycocotools.mask`` (COCO's polygons and
RLE) and ``label_studio_converter.brush`` (Label Studio's brush RLE). A CVAT mask export is a
text label map and colour PNGs, read and written with Pillow. Both libraries are optional
(the ``annotations`` extra) and imported when a format needs them.

The rules, the same for the three formats (docs/data.md):

- class order: ``data.annotations.classes`` when given; else the export's own order (COCO:
  categories by id; CVAT: its label map; Label Studio: label names sorted), the training
  export's first, with class 0 ``background`` (a class of that name moved first, else added);
- pixels no annotation covers are class 0; an image listed without annotations is all class 0;
- ignore (255): COCO ``iscrowd`` regions, and the regions of the label named
  ``data.annotations.ignore_label`` (default ``ignore``) in every format;
- overlaps (COCO, Label Studio; a CVAT mask is flat already): the smaller region wins. Regions
  are painted largest first, so an object drawn over a larger one (a car on the road polygon
  that runs under it) keeps its pixels whatever order the tool exported them in; regions of
  equal area are painted in export order (the later wins).
"""

from __future__ import annotations

import io
import json
import re
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from dualteacher.config import IGNORE_INDEX
from dualteacher.data.files import IMAGE_EXTS, default_palette, first_existing
from dualteacher.errors import BadSampleError, ConfigError, DataError

BACKGROUND = "background"
POLYGON_TOLERANCE = 1.0  # pixels a polygon vertex may lie outside the image (tools round)
BRUSH_ALPHA = 128  # a Label Studio brush pixel is painted where its alpha is at least this
EXTRA = "pip install 'dualteacher[annotations]'"
# The largest zip member read into memory: a mask PNG is far smaller; a larger one is a
# decompression bomb or not a mask (members are read in memory, never extracted to disk).
MAX_ZIP_MEMBER_BYTES = 1 << 30


def _inside(name: str, where: str) -> str:
    """``name``, an image name an export gives, if it stays inside the images folder: an
    absolute name or one that climbs out with ``..`` is refused, so that an export cannot make
    training read files elsewhere (SECURITY.md)."""
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise DataError(
            f"{where}: the image name {name!r} leads outside the images folder; name the "
            "images relative to it"
        )
    return name


def _pycocotools_mask():
    # Optional (the `annotations` extra), and only needed for COCO: imported when used.
    try:
        from pycocotools import mask
    except ImportError:
        raise ConfigError(f"COCO annotations need pycocotools: {EXTRA}") from None
    return mask


def _brush():
    # Optional (the `annotations` extra), and slow to import (pandas, nltk): only for Label
    # Studio files.
    try:
        from label_studio_converter import brush
    except ImportError:
        raise ConfigError(
            f"Label Studio annotations need label-studio-converter: {EXTRA}"
        ) from None
    return brush


@dataclass(frozen=True)
class Labelled:
    """One labelled image of an export."""

    image: Path  # the image file
    name: str  # the sample's name
    where: str  # the export and its entry, for messages
    record: Any  # what the export's ``labels`` decodes


@dataclass(frozen=True)
class Prediction:
    """One image's mask to write as a pre-annotation."""

    file_name: str  # how the export names the image (a relative path, or a URL)
    labels: np.ndarray  # (H, W) uint8 class ids, 255 = ignore
    score: float | None = None  # the ranking score (suggest) or mean confidence (pseudolabel)
    rank: int | None = None


def class_order(found: Sequence[str], given: Sequence[str] | None, ignore: str, where: str):
    """The class names in id order (see the module docstring) from the names the exports use
    (``found``, in their order) and ``data.annotations.classes`` (``given``)."""
    names = [n for n in dict.fromkeys(found) if n != ignore]
    if given is not None:
        given = [str(n) for n in given]
        if len(set(given)) != len(given) or ignore in given or len(given) < 2:
            raise ConfigError(
                f"data.annotations.classes={given}: give two or more distinct names, without "
                f"the ignore label {ignore!r}"
            )
        missing = [n for n in names if n not in given]
        if missing:
            raise ConfigError(
                f"data.annotations.classes lacks {', '.join(missing)}, which {where} uses: add "
                "them (or leave the key out to take the exports' order)"
            )
        return given
    background = next((n for n in names if n.lower() == BACKGROUND), None)
    if background is None:
        return [BACKGROUND, *names]
    return [background, *(n for n in names if n != background)]


def paint(regions: Sequence[tuple[int, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 of class 0 with each ``(value, boolean mask)`` painted over it, the
    largest region first (so the smallest wins), equal areas in order (the later wins)."""
    out = np.zeros(shape, np.uint8)
    areas = [int(m.sum()) for _, m in regions]
    for k in sorted(range(len(regions)), key=lambda k: (-areas[k], k)):
        value, mask = regions[k]
        out[mask] = value
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable JSON file ({e})") from None


def _size_check(where: str, stated: tuple[int, int], shape: tuple[int, int]) -> None:
    (sw, sh), (h, w) = stated, shape
    if (sh, sw) != (h, w):
        raise BadSampleError(
            where,
            f"the export says the image is {sw}x{sh}, the file is {w}x{h}",
            "export the annotations of these very images again (an image replaced or resized "
            "after annotating, or an EXIF rotation the tool did not apply)",
        )


# ---------------------------------------------------------------------------------- COCO
class CocoExport:
    """A COCO JSON file (``images``, ``annotations``, ``categories``); images under
    ``images_dir`` by their ``file_name``. Every image the file lists is labelled."""

    def __init__(self, path: Path, images_dir: Path, ignore: str):
        self.path, self.images_dir, self.ignore = path, images_dir, ignore
        doc = _read_json(path)
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
        ):
            raise DataError(
                f"{path}: a COCO file is a JSON object with the lists images, annotations and "
                "categories"
            )
        self.categories: dict[int, str] = {}
        for i, cat in enumerate(doc["categories"]):
            if (
                not isinstance(cat, dict)
                or not isinstance(cat.get("id"), int)
                or not isinstance(cat.get("name"), str)
            ):
                raise DataError(f"{path}, categories[{i}]: a category has an integer id and a name")
            if cat["id"] in self.categories:
                raise DataError(f"{path}, categories[{i}]: category id {cat['id']} appears twice")
            self.categories[cat["id"]] = cat["name"]
        self.images: dict[int, dict] = {}
        for i, im in enumerate(doc["images"]):
            if (
                not isinstance(im, dict)
                or not isinstance(im.get("id"), int)
                or not all(isinstance(im.get(k), int) for k in ("width", "height"))
                or not isinstance(im.get("file_name"), str)
            ):
                raise DataError(
                    f"{path}, images[{i}]: an image has an integer id, width, height and a "
                    "file_name"
                )
            self.images[im["id"]] = im
        self.annotations: dict[int, list[dict]] = {k: [] for k in self.images}
        for i, ann in enumerate(doc["annotations"]):
            ref = f"{path}, annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else i}"
            if not isinstance(ann, dict) or ann.get("image_id") not in self.images:
                raise DataError(f"{ref}: its image_id is not one of the file's images")
            if ann.get("category_id") not in self.categories:
                known = ", ".join(str(c) for c in sorted(self.categories))
                raise DataError(
                    f"{ref}: category_id {ann.get('category_id')!r} is not in the file's "
                    f"categories (ids {known}); export the file again, or add the category"
                )
            self.annotations[ann["image_id"]].append(ann)

    @property
    def found(self) -> list[str]:
        return [self.categories[k] for k in sorted(self.categories)]

    def items(self, classes: Sequence[str]) -> list[Labelled]:
        value = {n: i for i, n in enumerate(classes)}
        out = []
        for im in self.images.values():
            regions = []
            for ann in self.annotations[im["id"]]:
                name = self.categories[ann["category_id"]]
                crowd = bool(ann.get("iscrowd", 0))
                v = IGNORE_INDEX if crowd or name == self.ignore else value[name]
                regions.append((v, ann.get("segmentation"), ann.get("id")))
            where = f"{self.path}, image {im['file_name']!r} (id {im['id']})"
            out.append(
                Labelled(
                    self.images_dir / _inside(im["file_name"], where),
                    PurePosixPath(im["file_name"]).with_suffix("").as_posix(),
                    where,
                    ((im["width"], im["height"]), regions),
                )
            )
        return out

    @staticmethod
    def labels(item: Labelled, shape: tuple[int, int]) -> np.ndarray:
        stated, regions = item.record
        _size_check(item.where, stated, shape)
        return paint(
            [
                (v, coco_region(seg, shape, f"{item.where}, annotation {a}"))
                for v, seg, a in regions
            ],
            shape,
        )


def coco_region(seg: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """(H, W) bool of a COCO ``segmentation``: polygons, or an RLE (counts compressed or not),
    decoded by pycocotools. A polygon outside the image, or an RLE of another size, raises
    ``BadSampleError`` naming ``where``."""
    mask_api = _pycocotools_mask()
    h, w = shape
    fix = "correct the annotation in the tool, or check that the export belongs to these images"
    if isinstance(seg, list):
        if not seg:
            return np.zeros(shape, bool)
        for poly in seg:
            if (
                not isinstance(poly, list)
                or len(poly) < 6
                or len(poly) % 2
                or not all(isinstance(c, int | float) for c in poly)
            ):
                raise BadSampleError(
                    where, "a polygon is a list of at least three x, y pairs of numbers", fix
                )
            xy = np.asarray(poly, np.float64).reshape(-1, 2)
            t = POLYGON_TOLERANCE
            if (
                not np.isfinite(xy).all()
                or xy[:, 0].min() < -t
                or xy[:, 1].min() < -t
                or xy[:, 0].max() > w + t
                or xy[:, 1].max() > h + t
            ):
                raise BadSampleError(
                    where,
                    f"a polygon lies outside the image: x {xy[:, 0].min():g}..{xy[:, 0].max():g},"
                    f" y {xy[:, 1].min():g}..{xy[:, 1].max():g}, the image is {w}x{h}",
                    fix,
                )
        rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if list(size) != [h, w]:
            raise BadSampleError(
                where,
                f"an RLE of size {size} ([height, width]) for an image of {w}x{h} ([{h}, {w}])",
                fix,
            )
        if isinstance(counts, list):
            if sum(counts) != h * w or any(not isinstance(c, int) or c < 0 for c in counts):
                raise BadSampleError(
                    where, f"the RLE's counts cover {sum(counts)} pixels, the image {h * w}", fix
                )
            rle = mask_api.frPyObjects(seg, h, w)
        elif isinstance(counts, str | bytes):
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise BadSampleError(where, "the RLE's counts are neither a list nor a string", fix)
    else:
        raise BadSampleError(where, "the segmentation is neither polygons nor an RLE", fix)
    return mask_api.decode(rle).astype(bool)


def _first_written(classes: Sequence[str]) -> int:
    """The first class written as regions: class 0 is left out when it is ``background``
    (the pixels no region covers read back as class 0)."""
    return 1 if classes[0].lower() == BACKGROUND else 0


def coco_image(
    p: Prediction, image_id: int, first_annotation_id: int, classes: Sequence[str]
) -> tuple[dict, list[dict]]:
    """The COCO image entry of ``p`` and its annotations: one RLE region per class (category
    id = class id + 1, ``score`` the image's), ignore pixels an ``iscrowd`` region of the
    ignore category (id ``len(classes) + 1``, see ``coco_categories``)."""
    mask_api = _pycocotools_mask()
    h, w = p.labels.shape
    image = {"id": image_id, "file_name": p.file_name, "width": w, "height": h}
    image |= {"score": p.score} if p.score is not None else {}
    image |= {"rank": p.rank} if p.rank is not None else {}
    annotations = []
    for v in np.unique(p.labels).tolist():
        if v < _first_written(classes):
            continue
        rle = mask_api.encode(np.asfortranarray(p.labels == v, dtype=np.uint8))
        crowd = v == IGNORE_INDEX
        ann = {
            "id": first_annotation_id + len(annotations),
            "image_id": image_id,
            "category_id": len(classes) + 1 if crowd else v + 1,
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_api.area(rle)),
            "bbox": [float(x) for x in mask_api.toBbox(rle)],
            "iscrowd": int(crowd),
        }
        annotations.append(ann | ({"score": p.score} if p.score is not None else {}))
    return image, annotations


def coco_categories(classes: Sequence[str], with_ignore: bool, ignore: str = "ignore"):
    """The categories ``coco_image`` refers to: id = class id + 1, and the ignore label."""
    first = _first_written(classes)
    out = [{"id": c + 1, "name": classes[c]} for c in range(first, len(classes))]
    return out + ([{"id": len(classes) + 1, "name": ignore}] if with_ignore else [])


def coco_document(
    predictions: Sequence[Prediction], classes: Sequence[str], ignore: str = "ignore"
) -> dict:
    """A COCO JSON document of ``predictions`` (``coco_image`` each)."""
    images, annotations = [], []
    for i, p in enumerate(predictions, 1):
        image, anns = coco_image(p, i, len(annotations) + 1, classes)
        images.append(image)
        annotations += anns
    crowd = any(a["iscrowd"] for a in annotations)
    categories = coco_categories(classes, crowd, ignore)
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------------- CVAT
LABELMAP = "labelmap.txt"
CVAT_MASKS = "SegmentationClass"
CVAT_SETS = "ImageSets/Segmentation"
CVAT_IMAGES = "JPEGImages"
VOID_COLOUR = (224, 224, 192)  # PASCAL VOC's "void" colour: the ignore label when we write it


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class CvatExport:
    """A CVAT "Segmentation mask 1.1" export, a zip or its extracted folder: ``labelmap.txt``
    (``name:r,g,b:parts:actions`` a line), ``SegmentationClass/<name>.png`` colour masks,
    ``ImageSets/Segmentation/<subset>.txt``. Images: a folder export's ``JPEGImages/`` when
    it has one, else ``images_dir/<name>.<ext>``. A name the image sets list without a mask
    is all class 0 (the tool writes no mask for an image without annotations)."""

    def __init__(self, path: Path, images_dir: Path, ignore: str):
        self.path, self.images_dir, self.ignore = path, images_dir, ignore
        if path.is_file():
            try:
                with zipfile.ZipFile(path) as z:
                    self.members = set(z.namelist())
                    text = z.read(LABELMAP).decode() if LABELMAP in self.members else None
            except (OSError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: not a readable zip file ({e})") from None
            self.zip = True
        elif path.is_dir():
            self.zip = False
            self.members = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
            text = (path / LABELMAP).read_text() if LABELMAP in self.members else None
        else:
            raise DataError(f"{path} not found: give a CVAT 'Segmentation mask 1.1' zip or folder")
        if text is None:
            raise DataError(
                f"{path}: no {LABELMAP}, so its mask colours cannot be mapped to classes: it is "
                "not a CVAT 'Segmentation mask 1.1' export (export the task again in that format)"
            )
        self.labels_map: dict[str, tuple[int, int, int]] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, rest = line.partition(":")
            try:
                colour = tuple(int(c) for c in rest.split(":")[0].split(","))
                assert len(colour) == 3 and all(0 <= c <= 255 for c in colour)
            except (ValueError, AssertionError):
                raise DataError(
                    f"{path}, {LABELMAP} line {lineno}: expected name:r,g,b::, got {line!r}"
                ) from None
            if colour in self.labels_map.values() or name in self.labels_map:
                raise DataError(f"{path}, {LABELMAP} line {lineno}: {name} or its colour repeats")
            self.labels_map[name] = colour  # type: ignore[assignment]
        sets = sorted(
            m for m in self.members if m.startswith(CVAT_SETS + "/") and m.endswith(".txt")
        )
        if sets:
            ids = [
                ln.split()[0]
                for m in sets
                for ln in self._read(m).decode().splitlines()
                if ln.strip()
            ]
        else:
            prefix = CVAT_MASKS + "/"
            ids = sorted(m[len(prefix) : -4] for m in self.members if m.startswith(prefix))
        self.ids = [_inside(i, f"{path}, {CVAT_SETS}") for i in dict.fromkeys(ids)]

    def _read(self, member: str) -> bytes:
        if self.zip:
            with zipfile.ZipFile(self.path) as z:
                size = z.getinfo(member).file_size
                if size > MAX_ZIP_MEMBER_BYTES:
                    raise DataError(
                        f"{self.path}: member {member} would unpack to {size} bytes, more than "
                        f"{MAX_ZIP_MEMBER_BYTES} (a mask is far smaller): not read"
                    )
                return z.read(member)
        return (self.path / member).read_bytes()

    @property
    def found(self) -> list[str]:
        return list(self.labels_map)

    def palette(self, classes: Sequence[str]) -> list[tuple[int, int, int]]:
        fallback = default_palette(len(classes))
        return [self.labels_map.get(c, d) for c, d in zip(classes, fallback)]

    def items(self, classes: Sequence[str]) -> list[Labelled]:
        value = {n: i for i, n in enumerate(classes)}
        colours = {
            int(_pack(np.array(rgb))): IGNORE_INDEX if name == self.ignore else value[name]
            for name, rgb in self.labels_map.items()
        }
        out = []
        for name in self.ids:
            own = [self.path / CVAT_IMAGES / f"{name}{e}" for e in IMAGE_EXTS if not self.zip]
            image = first_existing(*own, *(self.images_dir / f"{name}{e}" for e in IMAGE_EXTS))
            member = f"{CVAT_MASKS}/{name}.png"
            has_mask = member in self.members
            out.append(
                Labelled(
                    image,
                    name,
                    f"{self.path}: {member}",
                    (self, member if has_mask else None, colours),
                )
            )
        return out

    @staticmethod
    def labels(item: Labelled, shape: tuple[int, int]) -> np.ndarray:
        export, member, colours = item.record
        if member is None:
            return np.zeros(shape, np.uint8)
        try:
            with Image.open(io.BytesIO(export._read(member))) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise BadSampleError(
                item.where, f"cannot read the mask ({e})", "export it again"
            ) from None
        if rgb.shape[:2] != tuple(shape):
            raise BadSampleError(
                item.where,
                f"the mask is {rgb.shape[1]}x{rgb.shape[0]}, its image {shape[1]}x{shape[0]}",
                "export the annotations of these very images again",
            )
        packed = _pack(rgb)
        keys = np.array(sorted(colours), np.uint32)
        pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
        unknown = keys[pos] != packed
        if unknown.any():
            bad = np.unique(packed[unknown])[:5]
            shown = ", ".join(f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in bad.tolist())
            raise BadSampleError(
                item.where,
                f"colours {shown} are not in {LABELMAP}",
                "export the task again (masks and label map together)",
            )
        values = np.array([colours[int(k)] for k in keys], np.uint8)
        return values[pos]


def cvat_member(p: Prediction) -> str:
    """Where the mask of ``p`` goes in a CVAT export (its name in the image set)."""
    return f"{CVAT_MASKS}/{PurePosixPath(p.file_name).with_suffix('').as_posix()}.png"


def cvat_mask(p: Prediction, palette: Sequence[Sequence[int]]) -> bytes:
    """The colour PNG of ``p`` (class c in ``palette[c]``, ignore in VOC's void colour)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[IGNORE_INDEX] = VOID_COLOUR
    buf = io.BytesIO()
    Image.fromarray(lut[p.labels]).save(buf, format="PNG")
    return buf.getvalue()


def cvat_index(
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    members: Sequence[str],
    with_ignore: bool,
    ignore: str = "ignore",
) -> dict[str, bytes]:
    """The label map (the ignore label in VOC's void colour when a mask has ignore pixels)
    and ``ImageSets/Segmentation/default.txt`` listing ``members`` in order (the ranking: the
    format has no score)."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(classes, palette)]
    if with_ignore:
        lines.append(f"{ignore}:{','.join(str(c) for c in VOID_COLOUR)}::")
    names = "".join(m[len(CVAT_MASKS) + 1 : -4] + "\n" for m in members)
    return {
        LABELMAP: ("\n".join(lines) + "\n").encode(),
        f"{CVAT_SETS}/default.txt": names.encode(),
    }


def cvat_files(
    predictions: Sequence[Prediction],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    ignore: str = "ignore",
) -> dict[str, bytes]:
    """The files of a CVAT "Segmentation mask 1.1" export of ``predictions`` (path in the zip
    -> bytes): ``cvat_mask`` of each and ``cvat_index``."""
    palette = [tuple(int(v) for v in c) for c in palette[: len(classes)]]
    files = {cvat_member(p): cvat_mask(p, palette) for p in predictions}
    with_ignore = any((p.labels == IGNORE_INDEX).any() for p in predictions)
    return files | cvat_index(classes, palette, list(files), with_ignore, ignore)


# --------------------------------------------------------------------------- Label Studio
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's prefix of uploaded file names


def labelstudio_image(data: Any, images_dir: Path) -> Path:
    """The local file of a task's image: its URL's file name (``/data/upload/1/ab12cd34-x.jpg``,
    ``/data/local-files/?d=dir/x.jpg``, a plain path) in ``images_dir``, without the prefix
    Label Studio gives uploads when the file is not there under its full name."""
    url = data.get("image") if isinstance(data, dict) else None
    if not isinstance(url, str):
        strings = [v for v in data.values() if isinstance(v, str)] if isinstance(data, dict) else []
        url = strings[0] if len(strings) == 1 else ""
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.parse_qs(parsed.query).get("d", [parsed.path])[0]
    name = PurePosixPath(urllib.parse.unquote(path)).name
    candidates = [images_dir / name]
    if _UPLOAD_PREFIX.match(name):
        candidates.append(images_dir / name[9:])
    return first_existing(*candidates)


class LabelStudioExport:
    """A Label Studio JSON export (a list of tasks) with brush labels. A task's labels are
    those of its last annotation that was not cancelled; a task without one is not labelled
    (its image is unlabelled). Images in ``images_dir`` (``labelstudio_image``)."""

    def __init__(self, path: Path, images_dir: Path, ignore: str):
        self.path, self.images_dir, self.ignore = path, images_dir, ignore
        doc = _read_json(path)
        if not isinstance(doc, list):
            raise DataError(f"{path}: a Label Studio JSON export is a list of tasks")
        self.tasks: list[tuple[dict, list[dict]]] = []
        found: set[str] = set()
        for i, task in enumerate(doc):
            tid = task.get("id", f"#{i}") if isinstance(task, dict) else f"#{i}"
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise DataError(f"{path}, task {tid}: a task is an object with its data")
            done = [
                a
                for a in task.get("annotations") or []
                if isinstance(a, dict) and not a.get("was_cancelled")
            ]
            if not done:
                continue
            results = []
            for r in done[-1].get("result") or []:
                value = r.get("value") if isinstance(r, dict) else None
                if not isinstance(value, dict):
                    raise DataError(f"{path}, task {tid}: a result without its value")
                labels = value.get("brushlabels")
                if r.get("type") != "brushlabels" or value.get("format") != "rle":
                    raise DataError(
                        f"{path}, task {tid}, result {r.get('id')}: a {r.get('type')} result; "
                        "only brush labels (BrushLabels, RLE) are read"
                    )
                if not isinstance(labels, list) or len(labels) != 1:
                    raise DataError(
                        f"{path}, task {tid}, result {r.get('id')}: a brush region has one "
                        f"label, got {labels!r}"
                    )
                found.add(labels[0])
                results.append(r)
            self.tasks.append((task, results))
        self.names = sorted(found)

    @property
    def found(self) -> list[str]:
        return self.names

    def items(self, classes: Sequence[str]) -> list[Labelled]:
        value = {n: i for i, n in enumerate(classes)}
        out = []
        for task, results in self.tasks:
            image = labelstudio_image(task["data"], self.images_dir)
            regions = []
            for r in results:
                name = r["value"]["brushlabels"][0]
                v = IGNORE_INDEX if name == self.ignore else value[name]
                size = (r.get("original_width"), r.get("original_height"))
                regions.append((v, r["value"]["rle"], size, r.get("id")))
            where = f"{self.path}, task {task.get('id')} ({image.name})"
            name = image.relative_to(self.images_dir).with_suffix("").as_posix()
            out.append(Labelled(image, name, where, regions))
        return out

    @staticmethod
    def labels(item: Labelled, shape: tuple[int, int]) -> np.ndarray:
        brush = _brush()
        h, w = shape
        regions = []
        for value, rle, size, rid in item.record:
            where = f"{item.where}, result {rid}"
            _size_check(where, size, shape)
            try:
                flat = brush.decode_rle(rle)
            except (ValueError, TypeError, IndexError) as e:
                raise BadSampleError(where, f"the brush RLE cannot be decoded ({e})") from None
            if flat.size != h * w * 4:
                raise BadSampleError(
                    where,
                    f"the brush RLE holds {flat.size} values, an RGBA image of {w}x{h} has "
                    f"{h * w * 4}",
                    "export the task again (the RLE belongs to an image of another size)",
                )
            regions.append((value, flat.reshape(h, w, 4)[..., 3] >= BRUSH_ALPHA))
        return paint(regions, shape)


def labelstudio_task(
    p: Prediction,
    classes: Sequence[str],
    *,
    model_version: str,
    from_name: str = "tag",
    to_name: str = "image",
    ignore: str = "ignore",
) -> dict:
    """A Label Studio task with ``p`` as its pre-annotation: one prediction (``score`` the
    image's, which Label Studio can sort tasks by) holding a brush region per class (class 0
    left out when it is ``background``; ignore pixels under the ``ignore`` label), encoded by
    ``label_studio_converter.brush``. ``from_name`` / ``to_name``: the names of the
    BrushLabels and Image tags of the project's labelling config."""
    brush = _brush()
    h, w = p.labels.shape
    result = []
    for v in np.unique(p.labels).tolist():
        if v < _first_written(classes):
            continue
        rle = brush.mask2rle((p.labels == v).astype(np.uint8) * 255)
        label = ignore if v == IGNORE_INDEX else classes[v]
        result.append(
            {
                "id": f"r{len(result) + 1}",
                "type": "brushlabels",
                "from_name": from_name,
                "to_name": to_name,
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": [int(b) for b in rle], "brushlabels": [label]},
            }
        )
    prediction: dict[str, Any] = {"model_version": model_version, "result": result}
    if p.score is not None:
        prediction["score"] = p.score
    task: dict[str, Any] = {"data": {to_name: p.file_name}, "predictions": [prediction]}
    if p.rank is not None:
        task["meta"] = {"rank": p.rank}
    return task


__all__ = [
    "BACKGROUND",
    "CocoExport",
    "CvatExport",
    "LabelStudioExport",
    "Labelled",
    "Prediction",
    "class_order",
    "coco_categories",
    "coco_document",
    "coco_image",
    "coco_region",
    "cvat_files",
    "cvat_index",
    "cvat_mask",
    "cvat_member",
    "labelstudio_image",
    "labelstudio_task",
    "paint",
]
