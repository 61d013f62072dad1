"""Tiny dataset trees in the exact on-disk formats (real JPEG / PNG files, 32-48 px).

Each ``make_*`` writes a tree under ``root`` and returns it. Masks are a function of the image
(left half one class, right half another, a 2-pixel ignore border on VOC) so that sizes and
values are known to the tests.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dualteacher.data.files import default_palette

H, W = 36, 44  # not a multiple of 16 (the demo model's divisor) on purpose


def image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def halves(left: int, right: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.full((h, w), left, np.uint8)
    mask[:, w // 2 :] = right
    return mask


def save_rgb(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def save_mask(path: Path, mask: np.ndarray, palette: list | None = None) -> None:
    """Single-channel PNG: mode P with ``palette`` (VOC style) or mode L."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask, mode="L")
    if palette is not None:
        im = im.convert("P")  # keeps the values as indices
        im.putpalette([c for rgb in palette for c in rgb] + [224, 224, 192] * (256 - len(palette)))
    im.save(path)


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


VOC_TRAIN = ["2007_000032", "2007_000039", "2007_000063", "2007_000068"]
VOC_VAL = ["2007_000033", "2007_000042"]
VOC_AUG_ONLY = ["2008_000001", "2008_000002", "2008_000003"]  # SBD: only in SegmentationClassAug
VOC_NO_MASK = ["2008_000004", "2008_000005"]  # detection-only images: a JPEG, no mask anywhere


def make_voc(root: Path, sbd: bool = True) -> Path:
    """VOCdevkit/VOC2012 with palette SegmentationClass and, with ``sbd``, L-mode
    SegmentationClassAug and train_aug.txt. Without ``sbd`` it is the official archive alone:
    JPEGImages holds every image (SBD's too), but only train/val images have masks."""
    voc = root / "VOCdevkit" / "VOC2012"
    palette = default_palette(256)
    for i, name in enumerate(VOC_TRAIN + VOC_VAL + VOC_AUG_ONLY + VOC_NO_MASK):
        save_rgb(voc / "JPEGImages" / f"{name}.jpg", image(i))
        if name in VOC_NO_MASK:
            continue
        mask = halves(0, 1 + i % 20)
        mask[:2] = 255  # VOC's object-boundary ignore band
        if name not in VOC_AUG_ONLY:
            save_mask(voc / "SegmentationClass" / f"{name}.png", mask, palette)
        if sbd:
            save_mask(voc / "SegmentationClassAug" / f"{name}.png", mask)
    sets = voc / "ImageSets" / "Segmentation"
    _write(sets / "train.txt", VOC_TRAIN)
    _write(sets / "val.txt", VOC_VAL)
    _write(sets / "trainval.txt", sorted(VOC_TRAIN + VOC_VAL))  # in the official archive too
    if sbd:
        _write(sets / "train_aug.txt", VOC_TRAIN + VOC_AUG_ONLY)
    return voc


CS_TRAIN = [("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
            ("jena", "jena_000000_000019"), ("jena", "jena_000001_000019")]  # fmt: skip
CS_VAL = [("frankfurt", "frankfurt_000000_000294"), ("frankfurt", "frankfurt_000001_000538")]


def make_cityscapes(root: Path) -> Path:
    """leftImg8bit + gtFine with raw labelIds (incl. ids that map to ignore); the first train
    image also has a labelTrainIds file."""
    cs = root / "cityscapes"
    for i, (split, (city, base)) in enumerate(
        [("train", x) for x in CS_TRAIN] + [("val", x) for x in CS_VAL]
    ):
        save_rgb(cs / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", image(10 + i))
        raw = halves(7, 26)  # road | car -> train ids 0 | 13
        raw[:4] = 0  # "unlabeled" -> ignore
        raw[4:8, :6] = 4  # "static" -> ignore
        raw[-3:] = 33  # bicycle -> 18
        gt = cs / "gtFine" / split / city
        save_mask(gt / f"{base}_gtFine_labelIds.png", raw)
        if i == 0:
            train_ids = np.full_like(raw, 255)
            for t, raw_id in enumerate((7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26)):
                train_ids[raw == raw_id] = t
            train_ids[raw == 33] = 18
            save_mask(gt / f"{base}_gtFine_labelTrainIds.png", train_ids)
    return cs


ADE_TRAIN = [f"ADE_train_{i:08d}" for i in range(1, 6)]
ADE_VAL = [f"ADE_val_{i:08d}" for i in range(1, 3)]


def make_ade20k(root: Path) -> Path:
    """ADEChallengeData2016 with raw annotations 0 (other) and 1..150."""
    ade = root / "ADEChallengeData2016"
    for i, name in enumerate(ADE_TRAIN + ADE_VAL):
        folder = "training" if "train" in name else "validation"
        save_rgb(ade / "images" / folder / f"{name}.jpg", image(20 + i))
        raw = halves(1, 150)
        raw[:5] = 0
        save_mask(ade / "annotations" / folder / f"{name}.png", raw)
    return ade


FOLDER_CLASSES = """classes:
  - {name: background, color: [0, 0, 0]}
  - {name: cat, color: [255, 0, 0]}
  - dog
"""


def make_folder(root: Path, n_train: int = 4, n_unlabeled: int = 3) -> Path:
    """The user's layout: classes.yaml, train (one image without mask), val, unlabeled/."""
    data = root / "mydata"
    data.mkdir(parents=True, exist_ok=True)
    (data / "classes.yaml").write_text(FOLDER_CLASSES)
    for i in range(n_train):
        save_rgb(data / "train" / "images" / f"img{i}.jpg", image(30 + i))
        save_mask(data / "train" / "masks" / f"img{i}.png", halves(0, 1 + i % 2))
    save_rgb(data / "train" / "images" / "nomask.png", image(40))  # train image, no mask
    for i in range(2):
        save_rgb(data / "val" / "images" / f"v{i}.png", image(50 + i))
        save_mask(data / "val" / "masks" / f"v{i}.png", halves(2, 1))
    for i in range(n_unlabeled):
        save_rgb(data / "unlabeled" / f"u{i}.jpg", image(60 + i, 40, 40))
    return data


# ------------------------------------------------------------------- annotation tools' exports
# One tree per format, written with the formats' own encoders (pycocotools, Label Studio's
# converter) in the layout of data/annotated.py: ROOT/train.*, ROOT/val.*, ROOT/images/ (one
# image no export names: unlabelled) and ROOT/unlabeled/. Classes background, cat, dog; each
# labelled image: a cat on the left half, a dog square on the right (class 0 elsewhere).
TOOL_TRAIN = [f"t{i}" for i in range(3)]
TOOL_VAL = ["v0", "v1"]


def tool_mask(i: int) -> np.ndarray:
    """What every format's tiny tree labels image ``i``: cat left half, dog square, class 0."""
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 1
    mask[4 + i : 14 + i, W // 2 + 4 : W // 2 + 14] = 2
    return mask


def _tool_images(data: Path) -> list[tuple[str, np.ndarray]]:
    for i, name in enumerate(TOOL_TRAIN + TOOL_VAL + ["extra"]):
        save_rgb(data / "images" / f"{name}.png", image(70 + i))
    save_rgb(data / "unlabeled" / "u0.jpg", image(80, 40, 40))
    return [(n, tool_mask(i)) for i, n in enumerate(TOOL_TRAIN + TOOL_VAL)]


def make_coco(root: Path) -> Path:
    """train.json / val.json: the cat as a polygon, the dog as a compressed RLE (pycocotools)."""
    from pycocotools import mask as mask_api  # the tool's own encoder, as the tests need it

    data = root / "coco"
    pairs = _tool_images(data)
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    for split, names in (("train", TOOL_TRAIN), ("val", TOOL_VAL)):
        images, anns = [], []
        for k, (name, mask) in enumerate(p for p in pairs if p[0] in names):
            images.append({"id": k + 1, "file_name": f"{name}.png", "width": W, "height": H})
            cat = [0, 0, W // 2, 0, W // 2, H, 0, H]  # the left half, pixel edges
            rle = mask_api.encode(np.asfortranarray(mask == 2, dtype=np.uint8))
            dog = {"size": [H, W], "counts": rle["counts"].decode()}
            anns += [
                {"id": 2 * k + 1, "image_id": k + 1, "category_id": 1, "segmentation": [cat]},
                {"id": 2 * k + 2, "image_id": k + 1, "category_id": 2, "segmentation": dog},
            ]
        doc = {"images": images, "annotations": anns, "categories": cats}
        (data / f"{split}.json").write_text(json.dumps(doc))
    return data


def make_cvat(root: Path) -> Path:
    """train.zip (as CVAT exports it) and val/ (the same export, extracted)."""
    data = root / "cvat"
    pairs = _tool_images(data)
    colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]], np.uint8)
    labelmap = "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\n"
    labelmap += "dog:51,221,255::\n"
    for split, names in (("train", TOOL_TRAIN), ("val", TOOL_VAL)):
        listed = "".join(f"{n}\n" for n in names).encode()
        files = {"labelmap.txt": labelmap.encode(), "ImageSets/Segmentation/default.txt": listed}
        for name, mask in pairs:
            if name in names:
                buf = io.BytesIO()
                Image.fromarray(colours[mask]).save(buf, format="PNG")
                files[f"SegmentationClass/{name}.png"] = buf.getvalue()
        if split == "train":
            with zipfile.ZipFile(data / "train.zip", "w") as z:
                for member, content in files.items():
                    z.writestr(member, content)
        else:
            for member, content in files.items():
                (data / split / member).parent.mkdir(parents=True, exist_ok=True)
                (data / split / member).write_bytes(content)
    return data


def make_labelstudio(root: Path) -> Path:
    """train.json / val.json: brush results encoded by Label Studio's converter; uploaded
    file names carry Label Studio's 8-character prefix."""
    from label_studio_converter import brush  # the tool's own encoder, as the tests need it

    data = root / "labelstudio"
    pairs = _tool_images(data)
    for split, names in (("train", TOOL_TRAIN), ("val", TOOL_VAL)):
        tasks = []
        for k, (name, mask) in enumerate(p for p in pairs if p[0] in names):
            result = [
                {"id": f"r{c}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                 "original_width": W, "original_height": H, "image_rotation": 0,
                 "value": {"format": "rle", "brushlabels": [label],
                           "rle": brush.mask2rle((mask == c).astype(np.uint8) * 255)}}
                for c, label in ((1, "cat"), (2, "dog"))
            ]  # fmt: skip
            tasks.append({"id": k + 1, "data": {"image": f"/data/upload/1/0a1b2c3d-{name}.png"},
                          "annotations": [{"id": k + 1, "result": result}]})  # fmt: skip
        (data / f"{split}.json").write_text(json.dumps(tasks))
    return data
