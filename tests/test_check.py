"""``dualteacher check`` on good trees and on deliberately broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.errors import BadSampleError
from dualteacher.study.check import check_data

from . import trees


def run_check(capsys, *args: str) -> tuple[int, str]:
    try:
        main(["check", "demo", *args, "--workers", "2"])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out


def row(out: str, name: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(name + " "))


def test_check_good_folder_tree(tmp_path, capsys):
    root = trees.make_folder(tmp_path)
    code, out = run_check(capsys, "data.name=folder", f"data.root={root}")
    assert code == 0, out
    assert row(out, "labeled")[:3] == ["labeled", "4", "0"]
    assert row(out, "unlabeled")[:3] == ["unlabeled", "4", "0"]
    assert row(out, "val")[:3] == ["val", "2", "0"]
    # class pixel frequencies: train masks are half background, val half cat / half dog
    assert row(out, "background")[1:] == ["50.00", "0.00"]
    assert row(out, "dog")[1:] == ["25.00", "50.00"]
    assert "no problems found" in out


def test_check_good_benchmark_trees(tmp_path):
    trees.make_voc(tmp_path)
    trees.make_cityscapes(tmp_path)
    report = check_data(load_config(None, ["data.name=voc", f"data.root={tmp_path}"]), workers=1)
    assert report.ok and [s.count for s in report.sets] == [4, 3, 2]
    voc_ignore = report.sets[0].pixels[-1] / report.sets[0].pixels.sum()
    assert voc_ignore == pytest.approx(2 / trees.H)  # the 2-row boundary band
    val_ids = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    cfg = load_config(None, ["data.name=voc", f"data.root={tmp_path}", f"data.labeled={val_ids}"])
    assert "2 labelled image(s) are also validation images" in check_data(cfg).warnings[0]
    cfg = load_config(None, ["data.name=cityscapes", f"data.root={tmp_path}"])
    report = check_data(cfg, workers=1)
    # the default method (dual_teacher) needs unlabelled images: an empty set is an error
    assert not report.ok and "unlabeled set is empty" in report.errors[0]
    cfg = load_config(
        None, ["data.name=cityscapes", f"data.root={tmp_path}", "method.name=supervised"]
    )
    report = check_data(cfg, workers=1)
    assert report.ok and report.warnings
    names = report.classes
    pixels = report.sets[0].pixels
    assert pixels[names.index("road")] > 0 and pixels[names.index("bicycle")] > 0
    assert pixels[names.index("wall")] == 0


@pytest.mark.parametrize("sbd", [True, False])
def test_check_says_which_voc_unlabelled_pool_it_used(tmp_path, capsys, sbd):
    trees.make_voc(tmp_path, sbd=sbd)
    code, out = run_check(capsys, "data.name=voc", f"data.root={tmp_path}")
    assert code == 0, out
    cells = row(out, "unlabeled")
    count = len(trees.VOC_AUG_ONLY) + (0 if sbd else len(trees.VOC_NO_MASK))
    assert cells[:3] == ["unlabeled", str(count), "0"]
    origin = " ".join(cells[5:])  # the "from" column
    if sbd:
        assert origin == "SBD set (train_aug.txt) minus labelled and val"
    else:
        assert origin == (
            "JPEGImages/ minus labelled and val (no SBD: no train_aug.txt or SegmentationClassAug/)"
        )
    assert " ".join(row(out, "labeled")[5:]) == "ImageSets/Segmentation/train.txt"


def test_check_names_every_bad_file(tmp_path, capsys):
    root = trees.make_folder(tmp_path, n_train=5)  # img4 stays good
    train, val = root / "train", root / "val"
    jpeg = (train / "images" / "img0.jpg").read_bytes()
    (train / "images" / "img0.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated JPEG
    trees.save_mask(train / "masks" / "img1.png", np.zeros((20, 20), np.uint8))  # wrong size
    trees.save_mask(train / "masks" / "img2.png", trees.halves(0, 7))  # 7: not a class
    (train / "masks" / "img3.png").write_bytes(b"not a png at all")  # unreadable
    trees.save_mask(train / "masks" / "ghost.png", trees.halves(0, 1))  # no image
    Image.fromarray(trees.image(1)).save(val / "masks" / "v0.png")  # RGB colour mask
    (val / "masks" / "v1.png").unlink()  # val image without mask
    (root / "unlabeled" / "u1.jpg").write_bytes(b"\xff\xd8garbage")  # corrupt unlabelled image

    code, out = run_check(capsys, "data.name=folder", f"data.root={root}")
    assert code == 2  # bad data files: the user's input, the same status as train
    expect = {
        train / "images" / "img0.jpg": "cannot read the image",
        train / "masks" / "img1.png": "the mask is 20x20 but its image",
        train / "masks" / "img2.png": "label values 7 are not classes",
        train / "masks" / "img3.png": "cannot read the mask",
        train / "masks" / "ghost.png": "mask without an image",
        val / "masks" / "v0.png": "the mask is a RGB image of colours",
        val / "masks" / "v1.png": "is missing",
        root / "unlabeled" / "u1.jpg": "cannot read the image",
    }
    for path, reason in expect.items():
        lines = [ln for ln in out.splitlines() if f"{path}:" in ln]
        assert lines and reason in lines[0], (path, out)
    # the 8 bad files, and the val set has no readable sample left
    assert "9 error(s)" in out and "no sample of the val set can be read" in out
    assert row(out, "labeled")[:3] == ["labeled", "5", "5"]  # 4 bad pairs + the orphan mask
    assert row(out, "val")[:3] == ["val", "1", "2"]

    # the same problems stop training before the first step, with the file named
    with pytest.raises(SystemExit) as e:
        main(
            ["train", "demo", "data.name=folder", f"data.root={root}", "--out", str(tmp_path / "r")]
        )
    assert e.value.code == 2
    assert "ghost.png" in capsys.readouterr().err


def test_check_reports_missing_files_listed_in_a_split(tmp_path, capsys):
    voc = trees.make_voc(tmp_path)
    split = tmp_path / "lab.txt"
    split.write_text("2007_000032\n2099_000001\n")
    (voc / "SegmentationClass" / "2007_000032.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out = run_check(capsys, "data.name=voc", f"data.root={tmp_path}", f"data.labeled={split}")
    assert code == 2  # bad data files: the user's input, the same status as train
    assert f"{voc / 'JPEGImages' / '2099_000001.jpg'}: image file is missing" in out
    assert f"{voc / 'SegmentationClass' / '2007_000032.png'}: cannot read the mask" in out
    # no mask of the missing id exists in either folder: reported once, at the preferred path
    assert f"{voc / 'SegmentationClass' / '2099_000001.png'}: mask of" in out


def test_bad_sample_error_from_a_dataloader_worker_keeps_the_message():
    # DataLoader workers re-raise an error as ExcType(formatted traceback)
    msg = (
        "Caught BadSampleError in DataLoader worker process 0.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 1\ndualteacher.errors.BadSampleError: '
        "/d/m.png: the mask is 2x2 but its image /d/i.jpg is 4x4. Fix: re-export it\n"
    )
    err = BadSampleError(msg)
    assert str(err) == "/d/m.png: the mask is 2x2 but its image /d/i.jpg is 4x4. Fix: re-export it"
    assert str(BadSampleError("/d/a.png", "broken", "redo it")) == "/d/a.png: broken. Fix: redo it"


def test_check_hints_at_class_weights_for_a_rare_class(tmp_path, capsys):
    """A class under 2 % of the labelled pixels gets the method.class_weights hint, unless the
    config already weighs the classes (the demo config does)."""
    root = trees.make_folder(tmp_path)
    for i in range(4):  # dog: one 3 x 4 patch per 36 x 44 mask, 0.76 % of the pixels
        mask = trees.halves(0, 1)
        mask[:3, :4] = 2
        trees.save_mask(root / "train" / "masks" / f"img{i}.png", mask)
    code, out = run_check(
        capsys, "data.name=folder", f"data.root={root}", "method.class_weights=none"
    )
    assert code == 0, out
    assert "classes under 2 % of the labelled pixels: dog (0.76 %)" in out
    assert "method.class_weights=sqrt_inverse" in out
    code, out = run_check(
        capsys, "data.name=folder", f"data.root={root}", "method.class_weights=sqrt_inverse"
    )
    assert code == 0 and "classes under 2 %" not in out


def test_check_says_what_the_auto_strong_view_would_do(tmp_path, capsys, monkeypatch):
    """The labelled set's colour separability and data.strong.colour=auto's choice: keep colour
    on the demo (each class its colour), vary it below the cue; not measured on a sample."""
    small = ["data.demo.num_labeled=6", "data.demo.num_unlabeled=4", "data.demo.num_val=4"]
    code, out = run_check(capsys, *small)
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if ln.startswith("colour separates"))
    score = float(line.split(" at ")[1].split()[0])
    assert score >= 0.35 and line.endswith("strong view keeps colour (hue 0, no greyscale)")
    from dualteacher.data.check import LabelledStats

    monkeypatch.setattr(LabelledStats, "colour_separability", lambda self: 0.2)
    code, out = run_check(capsys, *small)
    assert "at 0.20 (0: chance" in out and "strong view varies it (hue 0.25, greyscale 0.2)" in out
    code, out = run_check(capsys, *small, "--sample", "2")
    assert "colour separates" not in out  # the labelled set was sampled, not read whole


def test_object_extents_measures_each_connected_region_but_the_skipped_class():
    """Each 4-connected region of a class counts once, by the longer side of its box."""
    from dualteacher.data.base import ArraySource
    from dualteacher.data.check import labelled_stats

    mask = np.zeros((1, 20, 30), np.uint8)
    mask[0, 2:5, 3:10] = 1  # 3 x 7: extent 7
    mask[0, 10:19, 20:22] = 1  # 9 x 2, a second region of class 1: 9
    mask[0, 12:14, 2:4] = 2  # 2 x 2: 2
    mask[0, 0, 29] = 255  # ignore: not a class
    stats = labelled_stats(ArraySource(np.zeros((1, 20, 30, 3), np.uint8), mask), 3)
    assert sorted(stats.object_extents(skip=0)) == [2, 7, 9]
    assert sorted(stats.object_extents(skip=1)) == [2, 30]
    assert stats.max_side == 30


def test_the_crop_hint_suggests_twice_the_median_extent_up_to_the_image_side():
    from dualteacher.data.base import ArraySource
    from dualteacher.data.check import labelled_stats

    masks = np.zeros((3, 100, 100), np.uint8)
    for i, side in enumerate((30, 40, 50)):  # one square per image: median extent 40
        masks[i, 10 : 10 + side, 10 : 10 + side] = 1
    stats = labelled_stats(ArraySource(np.zeros((3, 100, 100, 3), np.uint8), masks), 2)
    hint = stats.crop_warning(32, ["background", "thing"])
    assert "over 40 px" in hint and "data.crop_size=96 shows" in hint  # 2 x 40, to 32s
    assert stats.crop_warning(96, ["b", "t"]) is None  # 40 <= 96 / 2
    assert stats.crop_warning(100, ["b", "t"]) is None  # the crop holds the whole image
    masks[:, 10:90, 10:80] = 1  # 80 px objects: 2 x 80 = 160 is over the side, 100 -> 128
    stats = labelled_stats(ArraySource(np.zeros((3, 100, 100, 3), np.uint8), masks), 2)
    assert "data.crop_size=128 shows" in stats.crop_warning(64, ["b", "t"])


def test_check_hints_at_a_larger_crop_when_objects_do_not_fit_it(tmp_path, capsys):
    """The folder's cat / dog regions are 36 x 22 px in 36 x 44 images: at a 16 px crop most
    steps see them cut, so check suggests a crop that shows them whole (2 x the median extent,
    at most the image side, in multiples of 32); not at a crop that holds the whole image, nor
    for objects under half the crop."""
    root = trees.make_folder(tmp_path)
    code, out = run_check(capsys, "data.name=folder", f"data.root={root}", "data.crop_size=16")
    assert code == 0, out
    hint = next(ln for ln in out.splitlines() if "training crop" in ln)
    assert "over 36 px wide or tall" in hint and "(data.crop_size=16)" in hint
    assert "data.crop_size=64 shows most of them whole (the images are up to 44 px)" in hint
    code, out = run_check(capsys, "data.name=folder", f"data.root={root}", "data.crop_size=48")
    assert code == 0 and "training crop" not in out  # the crop holds whole images
    for i in range(4):  # small objects: 6 x 6 squares on background, under half of 16
        mask = np.zeros((trees.H, trees.W), np.uint8)
        mask[5:11, 5:11], mask[20:26, 30:36] = 1, 2
        trees.save_mask(root / "train" / "masks" / f"img{i}.png", mask)
    code, out = run_check(capsys, "data.name=folder", f"data.root={root}", "data.crop_size=16")
    assert code == 0 and "training crop" not in out, out


def test_training_reads_the_labelled_set_once_and_warns_of_the_crop(tmp_path, capsys, monkeypatch):
    """The class weights, the auto strong view and the crop warning come from one read of the
    labelled set, and `train` prints the warning that `check` gives (the folder's objects are
    36 px, the crop 16 px)."""
    import torch

    from dualteacher.data.check import labelled_stats
    from dualteacher.data.files import FileSource
    from dualteacher.engine.run import build_training

    root = trees.make_folder(tmp_path)
    reads = []
    load = FileSource.load
    monkeypatch.setattr(
        FileSource, "load", lambda self, i: reads.append((self, i)) or load(self, i)
    )
    args = [
        "data.name=folder",
        f"data.root={root}",
        "data.crop_size=16",
        "method.class_weights=sqrt_inverse",
        "data.strong.colour=auto",
        "method.dual_teacher.distribution_alignment=true",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    run = build_training(load_config("demo", args))
    out = capsys.readouterr().out
    labelled = sorted(i for source, i in reads if source is run.bundle.labeled)
    assert labelled == list(range(len(run.bundle.labeled)))  # each labelled sample once
    assert "warning: half of the labelled objects" in out and "data.crop_size=64 shows" in out
    # the same read gives distribution alignment its prior: the labelled class pixel shares
    pixels = labelled_stats(run.bundle.labeled, run.bundle.num_classes).pixels
    shares = torch.as_tensor(pixels / pixels.sum(), dtype=torch.float32)
    torch.testing.assert_close(run.method.class_prior, shares)
    assert "labelled class shares (alignment / balance prior)" in out
    # balance_confident alone wants the same prior
    args[-2:-1] = ["method.dual_teacher.balance_confident=true"]
    balanced = build_training(load_config("demo", [*args[:-1], f"train.out_dir={tmp_path / 'b'}"]))
    torch.testing.assert_close(balanced.method.class_prior, shares)
