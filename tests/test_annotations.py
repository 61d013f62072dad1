"""Annotation tools' formats (``data.annotations``), both ways, checked with the tools' own
libraries: what pycocotools and Label Studio's converter write, we read; what we write, they
read back to the same masks, pixel for pixel. One scene has every hard case: a ring (a region
with a hole), two overlapping objects, an ignore region and a class absent from the image.
Then bad input (one line naming the file and the entry), ``check``'s per-class pixel counts,
training on each format's tiny tree, and ``suggest`` / ``pseudolabel --format``."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from label_studio_converter import brush
from PIL import Image
from pycocotools import mask as mask_api
from pycocotools.coco import COCO

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data import annotations, build_data
from dualteacher.data.annotations import (
    CocoExport,
    CvatExport,
    LabelStudioExport,
    Prediction,
    coco_document,
    cvat_files,
    labelstudio_task,
)
from dualteacher.errors import BadSampleError, DataError
from dualteacher.study.check import check_data

from . import trees
from .conftest import TINY

H, W = 30, 40
FILES = {"coco": "coco.json", "cvat": "cvat.zip", "labelstudio": "labelstudio.json"}
CLASSES = ["background", "cat", "dog", "bird"]  # bird: in the label space, in no image
PALETTE = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)]


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


RING = box(2, 16, 2, 16) & ~box(6, 12, 6, 12)  # a cat with a hole
BIG, SMALL = box(4, 24, 20, 38), box(8, 14, 24, 30)  # a dog, and a cat over it
CROWD = box(26, 30, 0, 40)  # unlabelled (ignore) region


def scene() -> np.ndarray:
    """The expected class ids: the smaller object wins where two overlap."""
    out = np.zeros((H, W), np.uint8)
    out[RING] = 1
    out[BIG] = 2
    out[SMALL] = 1
    out[CROWD] = 255
    return out


def _rle(m: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(m, dtype=np.uint8))
    return {"size": [H, W], "counts": rle["counts"].decode()}


def _save(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _coco_from_the_tool(tmp_path: Path) -> Path:
    """A COCO file as pycocotools and a polygon tool write it; the small cat is listed before
    the big dog, so "the later annotation wins" would lose it."""
    poly = [float(v) for v in (20, 4, 38, 4, 38, 24, 20, 24)]  # BIG, pixel edges
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": _rle(RING), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _rle(SMALL), "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 5, "segmentation": [poly], "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 5, "segmentation": _rle(CROWD), "iscrowd": 1},
    ]
    cats = [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 2, "file_name": "empty.png", "width": W, "height": H},  # no annotation
    ]
    return _save(
        tmp_path / "coco.json", {"images": images, "annotations": anns, "categories": cats}
    )


def _labels(export, classes=None) -> dict[str, np.ndarray]:
    classes = classes or ["background", *export.found]
    return {it.name: export.labels(it, (H, W)) for it in export.items(classes)}


def test_coco_from_pycocotools_is_read(tmp_path):
    export = CocoExport(_coco_from_the_tool(tmp_path), tmp_path, "ignore")
    assert export.found == ["cat", "dog", "bird"]  # by category id
    got = _labels(export)
    np.testing.assert_array_equal(got["a"], scene())
    np.testing.assert_array_equal(got["empty"], np.zeros((H, W), np.uint8))


def test_coco_we_write_reads_back_with_pycocotools(tmp_path):
    truth = scene()
    doc = coco_document([Prediction("a.png", truth, 0.5, 1)], CLASSES)
    path = _save(tmp_path / "ours.json", doc)
    coco = COCO(str(path))
    rebuilt = np.zeros((H, W), np.uint8)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[1])):
        m = coco.annToMask(ann).astype(bool)
        assert not (rebuilt[m] != 0).any()  # the regions we write never overlap
        rebuilt[m] = 255 if ann["iscrowd"] else CLASSES.index(names[ann["category_id"]])
        assert ann["score"] == 0.5
    np.testing.assert_array_equal(rebuilt, truth)
    assert coco.loadImgs([1])[0]["score"] == 0.5
    # and our reader takes it back, with the model's class order
    np.testing.assert_array_equal(
        _labels(CocoExport(path, tmp_path, "ignore"), CLASSES)["a"], truth
    )


def _ls_result(i, mask, label):
    return {
        "id": f"r{i}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
        "original_width": W, "original_height": H, "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255),
                  "brushlabels": [label]},
    }  # fmt: skip


def test_labelstudio_from_its_converter_is_read(tmp_path):
    result = [
        _ls_result(1, RING, "cat"),
        _ls_result(2, SMALL, "cat"),  # before the big dog: "later wins" would lose it
        _ls_result(3, BIG, "dog"),
        _ls_result(4, CROWD, "ignore"),
    ]
    tasks = [
        {"id": 7, "data": {"image": "/data/upload/3/0a1b2c3d-a.png"},
         "annotations": [{"id": 1, "result": []},  # an older annotation: not the one read
                         {"id": 2, "result": result},
                         {"id": 3, "was_cancelled": True, "result": []}]},
        {"id": 8, "data": {"image": "/data/local-files/?d=photos/empty.png"},
         "annotations": [{"id": 4, "result": []}]},
        {"id": 9, "data": {"image": "/data/upload/3/b.png"}, "predictions": []},  # unlabelled
    ]  # fmt: skip
    for name in ("a.png", "empty.png"):
        Image.new("RGB", (W, H)).save(tmp_path / name)
    export = LabelStudioExport(_save(tmp_path / "ls.json", tasks), tmp_path, "ignore")
    got = _labels(export, CLASSES)
    assert sorted(got) == ["a", "empty"]
    np.testing.assert_array_equal(got["a"], scene())
    np.testing.assert_array_equal(got["empty"], np.zeros((H, W), np.uint8))


def test_labelstudio_we_write_reads_back_with_its_converter(tmp_path):
    truth = scene()
    task = labelstudio_task(Prediction("a.png", truth, 0.25, 3), CLASSES, model_version="m")
    (prediction,) = task["predictions"]
    assert prediction["score"] == 0.25 and task["meta"] == {"rank": 3}
    rebuilt = np.zeros((H, W), np.uint8)
    for r in prediction["result"]:
        alpha = brush.decode_rle(r["value"]["rle"]).reshape(H, W, 4)[..., 3]
        (label,) = r["value"]["brushlabels"]
        rebuilt[alpha > 0] = 255 if label == "ignore" else CLASSES.index(label)
    np.testing.assert_array_equal(rebuilt, truth)
    # as an annotation, our reader takes it back
    task["annotations"] = [{"id": 1, "result": prediction["result"]}]
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    export = LabelStudioExport(_save(tmp_path / "ls.json", [task]), tmp_path, "ignore")
    np.testing.assert_array_equal(_labels(export, CLASSES)["a"], truth)


def test_cvat_we_write_reads_back_as_colours_and_through_our_reader(tmp_path):
    truth = scene()
    files = cvat_files([Prediction("sub/a.jpg", truth, 0.5, 1)], CLASSES, PALETTE)
    labelmap = {}
    for line in files["labelmap.txt"].decode().splitlines():
        if not line.startswith("#"):
            name, colour = line.split(":")[:2]
            labelmap[tuple(int(c) for c in colour.split(","))] = name
    assert set(labelmap.values()) == {*CLASSES, "ignore"}
    with Image.open(io.BytesIO(files["SegmentationClass/sub/a.png"])) as im:
        rgb = np.asarray(im.convert("RGB"))
    names = np.vectorize(lambda *c: labelmap[c])(rgb[..., 0], rgb[..., 1], rgb[..., 2])
    expected = np.array([*CLASSES, *[""] * 251, "ignore"], object)[truth]
    assert (names == expected).all()
    assert files["ImageSets/Segmentation/default.txt"] == b"sub/a\n"
    with zipfile.ZipFile(tmp_path / "task.zip", "w") as z:
        for member, content in files.items():
            z.writestr(member, content)
    np.testing.assert_array_equal(
        _labels(CvatExport(tmp_path / "task.zip", tmp_path, "ignore"), CLASSES)["sub/a"], truth
    )


# ------------------------------------------------------------------------------ bad input
def _cli(*args: str) -> int:
    try:
        return main(list(args)) or 0
    except SystemExit as e:  # an error's status, or check's status 2
        return int(e.code)


def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_coco_unknown_category_id_names_file_and_annotation(tmp_path):
    path = _coco_from_the_tool(tmp_path)
    doc = json.loads(path.read_text())
    doc["annotations"][2]["category_id"] = 4
    _save(path, doc)
    with pytest.raises(DataError) as e:
        CocoExport(path, tmp_path, "ignore")
    assert _one_line(e.value).startswith(f"{path}, annotation 3: category_id 4 is not in")


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([[20.0, 4.0, 45.0, 4.0, 45.0, 24.0]], "a polygon lies outside the image: x 20..45"),
        ({"size": [H, W + 1], "counts": _rle(box(0, 1, 0, 1))["counts"]}, "an RLE of size"),
        ({"size": [H, W], "counts": [5, 5]}, "the RLE's counts cover 10 pixels"),
    ],
    ids=["polygon-outside", "rle-size", "rle-counts"],
)
def test_coco_bad_region_names_file_image_and_annotation(tmp_path, segmentation, reason):
    path = _coco_from_the_tool(tmp_path)
    doc = json.loads(path.read_text())
    doc["annotations"][2]["segmentation"] = segmentation
    export = CocoExport(_save(path, doc), tmp_path, "ignore")
    item = export.items(CLASSES)[0]
    with pytest.raises(BadSampleError) as e:
        export.labels(item, (H, W))
    assert _one_line(e.value).startswith(f"{path}, image 'a.png' (id 1), annotation 3: {reason}")


def test_polygon_on_the_border_is_no_error(tmp_path):
    # tools round vertices: up to one pixel outside the image is the image's edge
    path = _coco_from_the_tool(tmp_path)
    doc = json.loads(path.read_text())
    doc["annotations"][2]["segmentation"] = [[20.0, -1.0, 41.0, -1.0, 41.0, 24.0, 20.0, 24.0]]
    export = CocoExport(_save(path, doc), tmp_path, "ignore")
    assert (export.labels(export.items(CLASSES)[0], (H, W))[0, 20:] == 2).all()


def test_labelstudio_rle_of_another_size(tmp_path):
    result = [_ls_result(1, RING, "cat")]
    result[0]["value"]["rle"] = brush.mask2rle(np.zeros((H, W + 2), np.uint8))
    tasks = [{"id": 5, "data": {"image": "a.png"}, "annotations": [{"result": result}]}]
    export = LabelStudioExport(_save(tmp_path / "ls.json", tasks), tmp_path, "ignore")
    with pytest.raises(BadSampleError) as e:
        export.labels(export.items(CLASSES)[0], (H, W))
    assert _one_line(e.value).startswith(
        f"{tmp_path / 'ls.json'}, task 5 (a.png), result r1: the brush RLE holds"
    )


def test_coco_image_name_leading_outside_the_images_folder_refused(tmp_path):
    path = _coco_from_the_tool(tmp_path)
    doc = json.loads(path.read_text())
    doc["images"][0]["file_name"] = "../elsewhere/x.png"
    _save(path, doc)
    with pytest.raises(DataError) as e:
        CocoExport(path, tmp_path, "ignore").items(["background", "cat", "dog"])
    assert "'../elsewhere/x.png' leads outside the images folder" in _one_line(e.value)


def test_cvat_image_set_name_leading_outside_refused(tmp_path, capsys):
    root = trees.make_cvat(tmp_path)
    with zipfile.ZipFile(root / "train.zip") as z:
        kept = {m: z.read(m) for m in z.namelist()}
    sets = [m for m in kept if m.startswith("ImageSets/")]
    kept[sets[0]] = b"../../outside\n" + kept[sets[0]]
    with zipfile.ZipFile(root / "train.zip", "w") as z:
        for member, content in kept.items():
            z.writestr(member, content)
    assert _cli("check", "demo", "data.name=cvat", f"data.root={root}") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'../../outside' leads outside the images folder" in line


def test_cvat_zip_member_over_the_size_cap_refused(tmp_path, monkeypatch):
    root = trees.make_cvat(tmp_path)
    export = CvatExport(root / "train.zip", root / "images", "ignore")
    monkeypatch.setattr(annotations, "MAX_ZIP_MEMBER_BYTES", 10)  # every mask PNG is larger
    with pytest.raises(DataError) as e:
        export._read(next(m for m in export.members if m.startswith("SegmentationClass/")))
    assert "would unpack to" in _one_line(e.value)


def test_cvat_zip_without_label_map(tmp_path, capsys):
    root = trees.make_cvat(tmp_path)
    with zipfile.ZipFile(root / "train.zip") as z:
        kept = {m: z.read(m) for m in z.namelist() if m != "labelmap.txt"}
    with zipfile.ZipFile(root / "train.zip", "w") as z:
        for member, content in kept.items():
            z.writestr(member, content)
    assert _cli("check", "demo", "data.name=cvat", f"data.root={root}") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{root / 'train.zip'}: no labelmap.txt" in line


def test_check_names_unreadable_annotations_and_counts_pixels(tmp_path, capsys):
    root = trees.make_coco(tmp_path)
    doc = json.loads((root / "train.json").read_text())
    doc["annotations"][0]["segmentation"] = [[0.0, 0.0, 99.0, 0.0, 99.0, 5.0]]  # t0's cat
    _save(root / "train.json", doc)
    report = check_data(load_config(None, ["data.name=coco", f"data.root={root}"]), workers=1)
    (problem,) = report.sets[0].problems
    assert str(problem).startswith(
        f"{root / 'train.json'}, image 't0.png' (id 1), annotation 1: a polygon lies outside"
    )
    # the readable labelled images t1, t2: their pixels per class, exactly
    expected = np.bincount(np.concatenate([trees.tool_mask(i).ravel() for i in (1, 2)]))
    assert report.sets[0].pixels[:3].tolist() == expected.tolist()
    code = _cli("check", "demo", "data.name=coco", f"data.root={root}", "--workers", "1")
    out = capsys.readouterr().out
    assert code == 2
    counts = out[out.index("class pixel counts") :].splitlines()
    val = np.bincount(np.concatenate([trees.tool_mask(i).ravel() for i in (3, 4)]))  # v0, v1
    rows = [["class", "labeled", "val"]]
    rows += [
        [c, f"{n:,}", f"{v:,}"] for c, n, v in zip(["background", "cat", "dog"], expected, val)
    ]
    rows += [["(ignore)", "0", "0"]]
    assert [line.split() for line in counts[1:6]] == rows
    assert f"[labeled] {problem}" in out


# ------------------------------------------------------------------------------ train, serve
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run on each format's tiny tree: {format: (data root, checkpoint)}."""
    out = {}
    for fmt in ("coco", "cvat", "labelstudio"):
        tmp = tmp_path_factory.mktemp(fmt)
        root = getattr(trees, f"make_{fmt}")(tmp)
        run = tmp / "run"
        args = [*TINY, "train.steps=2", f"data.name={fmt}", f"data.root={root}"]
        assert _cli("train", "demo", *args, "--out", str(run)) == 0
        out[fmt] = (root, run / "latest.pt")
    return out


@pytest.mark.parametrize("fmt", ["coco", "cvat", "labelstudio"])
def test_train_runs_on_each_format(trained, fmt):
    root, ckpt = trained[fmt]
    assert ckpt.is_file()
    metrics = [json.loads(x) for x in (ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2
    bundle = build_data(load_config(None, [f"data.name={fmt}", f"data.root={root}"]).data)
    assert bundle.classes == ["background", "cat", "dog"] and len(bundle.unlabeled) == 2


def _decode_export(fmt: str, out: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """An export of ours decoded with the tool's library (CVAT: its colours and label map)."""
    if fmt == "coco":
        coco = COCO(str(out / "coco.json"))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        got = {}
        for img in coco.loadImgs(coco.getImgIds()):
            m = np.zeros((img["height"], img["width"]), np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                value = 255 if ann["iscrowd"] else classes.index(names[ann["category_id"]])
                m[coco.annToMask(ann).astype(bool)] = value
            got[img["file_name"]] = m
        return got
    if fmt == "labelstudio":
        got = {}
        for task in json.loads((out / "labelstudio.json").read_text()):
            (pred,) = task["predictions"]
            m = None
            for r in pred["result"]:
                h, w = r["original_height"], r["original_width"]
                m = np.zeros((h, w), np.uint8) if m is None else m
                (label,) = r["value"]["brushlabels"]
                alpha = brush.decode_rle(r["value"]["rle"]).reshape(h, w, 4)[..., 3]
                m[alpha > 0] = 255 if label == "ignore" else classes.index(label)
            got[task["data"]["image"]] = np.zeros((trees.H, trees.W), np.uint8) if m is None else m
        return got
    export = CvatExport(out / "cvat.zip", out, "ignore")
    return {f"{it.name}.png": export.labels(it, (trees.H, trees.W)) for it in export.items(classes)}


@pytest.mark.parametrize("fmt", ["coco", "cvat", "labelstudio"])
def test_pseudolabel_format_matches_its_masks(trained, fmt, tmp_path):
    root, ckpt = trained["coco"]
    out = tmp_path / "pseudo"
    args = ["pseudolabel", str(ckpt), "--images", str(root / "images"), "--out", str(out)]
    assert _cli(*args, "--conf", "0.4", "--format", fmt) == 0
    decoded = _decode_export(fmt, out, ["background", "cat", "dog"])
    assert sorted(decoded) == sorted(
        f"{n}.png" for n in [*trees.TOOL_TRAIN, *trees.TOOL_VAL, "extra"]
    )
    ignored = 0
    for name, m in decoded.items():
        with Image.open(out / "masks" / name) as im:
            np.testing.assert_array_equal(m, np.asarray(im))
        ignored += int((m == 255).sum())
    assert ignored > 0  # the ignore region went out too (a 2-step model is unsure)
    listed = (out / ".dualteacher_outputs").read_text().split()
    assert FILES[fmt] in listed  # never read back as an input by a later serving run


def test_suggest_labelstudio_scores_in_ranking_order(trained, tmp_path):
    root, ckpt = trained["labelstudio"]
    out = tmp_path / "next"
    prefix = "/data/local-files/?d=photos/"
    args = ["suggest", str(ckpt), f"data.root={root}", "--top", "2", "--out", str(out)]
    assert _cli(*args, "--format", "labelstudio", "--image-prefix", prefix) == 0
    tasks = json.loads((out / "labelstudio.json").read_text())
    with open(out / "ranking.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:2]
    assert [t["data"]["image"] for t in tasks] == [
        prefix + r["name"] + Path(r["path"]).suffix for r in rows
    ]
    assert [round(t["predictions"][0]["score"], 6) for t in tasks] == [
        float(r["combined"]) for r in rows
    ]
    assert [t["meta"]["rank"] for t in tasks] == [1, 2]
