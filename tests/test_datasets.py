"""Loaders of the on-disk datasets, the label-id mappings, split files and CLI training runs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data import build_data
from dualteacher.data.ade20k import CLASSES as ADE_CLASSES
from dualteacher.data.cityscapes import LABEL_ID_LUT
from dualteacher.data.splits import draw_split
from dualteacher.engine.trainer import steps_per_epoch, total_steps
from dualteacher.errors import BadSampleError, ConfigError, DataError

from . import trees


def data_for(name: str, root, *overrides: str):
    cfg = load_config(None, [f"data.name={name}", f"data.root={root}", *overrides])
    return build_data(cfg.data)


def names(source) -> list[str]:
    return [e.name for e in source.entries]


def write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------ VOC
def test_voc_defaults_and_palette_masks_read_as_indices(tmp_path):
    voc = trees.make_voc(tmp_path)
    with Image.open(voc / "SegmentationClass" / "2007_000039.png") as im:
        assert im.mode == "P"  # a real palette PNG: colours differ from the indices
        assert im.getpalette()[3:6] == [128, 0, 0]
    b = data_for("voc", tmp_path)  # the folder above VOCdevkit is found too
    assert b.num_classes == 21 and b.classes[15] == "person"
    assert names(b.labeled) == trees.VOC_TRAIN  # ImageSets/Segmentation/train.txt
    assert names(b.val) == trees.VOC_VAL
    # unlabelled: the augmented set minus labelled and val
    assert names(b.unlabeled) == trees.VOC_AUG_ONLY
    s = b.labeled.load(1)
    assert s.image.shape == (trees.H, trees.W, 3) and s.image.dtype == np.uint8
    expected = trees.halves(0, 2)
    expected[:2] = 255
    assert np.array_equal(s.mask, expected)
    assert b.unlabeled.load(0).mask is None


def test_voc_split_file_formats(tmp_path):
    voc = trees.make_voc(tmp_path)
    # U2PL: one id per line, comments and blank lines skipped
    ids = write(tmp_path / "ids.txt", ["# labelled", "2007_000032", "", "2008_000002"])
    # UniMatch: "image mask" pairs naming SegmentationClass/ even for SBD-only images
    pairs = write(
        tmp_path / "pairs.txt",
        [
            "JPEGImages/2007_000039.jpg SegmentationClass/2007_000039.png",
            "JPEGImages/2008_000001.jpg SegmentationClass/2008_000001.png",
        ],
    )
    b = data_for("voc", voc, f"data.labeled={ids}", f"data.unlabeled={pairs}")
    assert names(b.labeled) == ["2007_000032", "2008_000002"]
    # the SBD-only image's mask comes from SegmentationClassAug
    assert b.labeled.entries[1].mask == voc / "SegmentationClassAug" / "2008_000002.png"
    assert b.labeled.load(1).mask.max() == 255
    assert names(b.unlabeled) == ["2007_000039", "2008_000001"]
    assert all(e.mask is None for e in b.unlabeled.entries)  # unlabelled masks never read
    # a pair file as the labelled split falls back to SegmentationClassAug as well
    b = data_for("voc", voc, f"data.labeled={pairs}")
    assert b.labeled.entries[1].mask.parent.name == "SegmentationClassAug"
    # without data.unlabeled: every other image of the augmented set, val excluded
    assert set(names(b.unlabeled)) == set(trees.VOC_TRAIN + trees.VOC_AUG_ONLY) - {
        "2007_000039",
        "2008_000001",
    }


def test_voc_with_sbd_unlabelled_pool_is_the_augmented_set(tmp_path):
    voc = trees.make_voc(tmp_path)
    b = data_for("voc", voc)
    assert names(b.unlabeled) == trees.VOC_AUG_ONLY  # the mask-less JPEGs are not used
    assert b.unlabeled.origin == "SBD set (train_aug.txt) minus labelled and val"
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()  # SBD masks alone
    b = data_for("voc", voc)
    assert names(b.unlabeled) == trees.VOC_AUG_ONLY
    assert b.unlabeled.origin == "SBD set (SegmentationClassAug/) minus labelled and val"


def test_voc_without_sbd_unlabelled_pool_is_the_other_jpegs(tmp_path):
    voc = trees.make_voc(tmp_path, sbd=False)  # the official VOC2012 archive alone
    assert not (voc / "SegmentationClassAug").exists()
    b = data_for("voc", voc)
    assert names(b.labeled) == trees.VOC_TRAIN and names(b.val) == trees.VOC_VAL
    # every JPEG that is neither in train.txt nor in val.txt
    assert names(b.unlabeled) == sorted(trees.VOC_AUG_ONLY + trees.VOC_NO_MASK)
    assert b.unlabeled.origin.startswith("JPEGImages/ minus labelled and val (no SBD")
    assert all(e.mask is None for e in b.unlabeled.entries)
    sample = b.unlabeled.load(len(b.unlabeled) - 1)  # a detection-only image: no mask file
    assert sample.image.shape == (trees.H, trees.W, 3) and sample.mask is None
    # a smaller labelled split: the rest of train.txt joins the pool; val.txt stays out even
    # when data.val names another list, and so does that list
    lab = write(tmp_path / "lab.txt", trees.VOC_TRAIN[:2])
    other_val = write(tmp_path / "val.txt", [trees.VOC_TRAIN[3]])
    b = data_for("voc", voc, f"data.labeled={lab}", f"data.val={other_val}")
    assert names(b.unlabeled) == sorted(
        trees.VOC_TRAIN[2:3] + trees.VOC_AUG_ONLY + trees.VOC_NO_MASK
    )


# ----------------------------------------------------------------------------- Cityscapes
def test_cityscapes_label_id_table_is_the_standard_one():
    ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    for raw in range(256):
        want = ids.index(raw) if raw in ids else 255
        assert LABEL_ID_LUT[raw] == want, raw


def test_cityscapes_maps_label_ids_and_accepts_train_ids(tmp_path):
    cs = trees.make_cityscapes(tmp_path)
    b = data_for("cityscapes", tmp_path)
    assert b.num_classes == 19 and b.classes[13] == "car"
    assert [e.name for e in b.labeled.entries][:2] == [
        "aachen_000000_000019",
        "aachen_000001_000019",
    ]
    assert len(b.val) == 2 and len(b.unlabeled) == 0  # no split file: all train labelled
    # the first image has a labelTrainIds file (used as is), the second only labelIds (mapped)
    assert b.labeled.entries[0].mask.name.endswith("_labelTrainIds.png")
    assert b.labeled.entries[1].mask.name.endswith("_labelIds.png")
    expected = trees.halves(0, 13)  # road | car
    expected[:4] = 255  # raw 0 "unlabeled"
    expected[4:8, :6] = 255  # raw 4 "static"
    expected[-3:] = 18  # raw 33 bicycle
    for i in (0, 1):
        assert np.array_equal(b.labeled.load(i).mask, expected)
    # UniMatch's lines name labelTrainIds files; a tree with only labelIds still works
    lines = [
        f"leftImg8bit/train/jena/{n}_leftImg8bit.png gtFine/train/jena/{n}_gtFine_labelTrainIds.png"
        for n in ("jena_000000_000019", "jena_000001_000019")
    ]
    uni = write(tmp_path / "uni.txt", lines)
    # U2PL's lines are image paths only: the mask is derived
    u2pl = write(
        tmp_path / "u2pl.txt", ["leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"]
    )
    b = data_for("cityscapes", cs, f"data.labeled={uni}")
    assert [e.mask.name for e in b.labeled.entries] == [
        "jena_000000_000019_gtFine_labelIds.png",
        "jena_000001_000019_gtFine_labelIds.png",
    ]
    assert np.array_equal(b.labeled.load(0).mask, expected)
    assert names(b.unlabeled) == ["aachen_000000_000019", "aachen_000001_000019"]
    b = data_for("cityscapes", cs, f"data.labeled={u2pl}")
    assert b.labeled.entries[0].mask.name == "aachen_000001_000019_gtFine_labelIds.png"
    assert len(b.unlabeled) == 3


# -------------------------------------------------------------------------------- ADE20K
def test_ade20k_reduces_zero_label_and_reads_dual_teacher_lists(tmp_path):
    ade = trees.make_ade20k(tmp_path)
    assert len(ADE_CLASSES) == 150 and len(set(ADE_CLASSES)) == 150
    b = data_for("ade20k", tmp_path)
    assert b.num_classes == 150 and len(b.palette) == 150
    assert len(b.labeled) == 5 and len(b.val) == 2 and len(b.unlabeled) == 0
    expected = trees.halves(0, 149)
    expected[:5] = 255  # raw 0 ("other") is ignored
    assert np.array_equal(b.labeled.load(0).mask, expected)
    # Dual Teacher's lists name physically split folders: images are found by name
    dt = [f"data/ADEChallengeData2016/images/training2_l/{n}.jpg" for n in trees.ADE_TRAIN[:2]]
    write(ade / "training2_l.txt", dt)  # a relative split path is also looked up in data.root
    b = data_for("ade20k", ade, "data.labeled=training2_l.txt")
    assert names(b.labeled) == trees.ADE_TRAIN[:2]
    assert (
        b.labeled.entries[0].mask == ade / "annotations" / "training" / f"{trees.ADE_TRAIN[0]}.png"
    )
    assert names(b.unlabeled) == trees.ADE_TRAIN[2:]
    # a raw value above 150 is no ADE label
    bad = trees.halves(1, 151)
    trees.save_mask(ade / "annotations" / "training" / f"{trees.ADE_TRAIN[0]}.png", bad)
    with pytest.raises(BadSampleError, match=r"ADE_train_00000001\.png: label values 151"):
        b.labeled.load(0)


# -------------------------------------------------------------------------------- folder
def test_folder_defaults_classes_and_unlabelled_without_masks(tmp_path):
    root = trees.make_folder(tmp_path)
    b = data_for("folder", root)
    assert b.classes == ["background", "cat", "dog"]
    assert b.palette[:2] == [(0, 0, 0), (255, 0, 0)] and len(b.palette) == 3
    assert names(b.labeled) == ["img0", "img1", "img2", "img3"]
    # train images without a mask, then everything in unlabeled/
    assert names(b.unlabeled) == ["nomask", "unlabeled/u0", "unlabeled/u1", "unlabeled/u2"]
    assert all(b.unlabeled.load(i).mask is None for i in range(len(b.unlabeled)))
    assert names(b.val) == ["v0", "v1"]
    assert np.array_equal(b.val.load(0).mask, trees.halves(2, 1))
    # class ids saved in three equal channels (OpenCV's default) are read as one channel
    grey = trees.halves(0, 2)
    Image.fromarray(np.stack([grey] * 3, -1)).save(root / "train" / "masks" / "img0.png")
    assert np.array_equal(b.labeled.load(0).mask, grey)
    # a split file of names; the other images become unlabelled
    split = write(tmp_path / "lab.txt", ["img1", "train/images/img3.jpg train/masks/img3.png"])
    b = data_for("folder", root, f"data.labeled={split}")
    assert names(b.labeled) == ["img1", "img3"]
    assert names(b.unlabeled)[:3] == ["img0", "img2", "nomask"]


def test_folder_ignore_index_and_bad_classes_yaml(tmp_path):
    root = trees.make_folder(tmp_path)
    (root / "classes.yaml").write_text("classes: [background, cat, dog]\nignore_index: 9\n")
    mask = trees.halves(0, 9)
    trees.save_mask(root / "train" / "masks" / "img0.png", mask)
    b = data_for("folder", root)
    assert np.array_equal(b.labeled.load(0).mask, trees.halves(0, 255))  # 9 -> internal ignore
    trees.save_mask(root / "train" / "masks" / "img0.png", trees.halves(0, 255))
    with pytest.raises(BadSampleError, match="label values 255"):
        b.labeled.load(0)  # 255 is no class here, and not the ignore value either
    for text, msg in [
        ("classes: []\n", "non-empty list 'classes'"),
        ("classes: [a, a]\n", "unique"),
        ("classes: [a, b]\nignore_index: 1\n", "ignore_index=1"),
        ("classes: [{name: a, color: [1, 2]}]\n", "three integers"),
        ("classes: [a]\ncolours: x\n", "unknown keys"),
    ]:
        (root / "classes.yaml").write_text(text)
        with pytest.raises(DataError, match=msg):
            data_for("folder", root)
    (root / "classes.yaml").unlink()
    with pytest.raises(DataError, match=r"classes\.yaml not found"):
        data_for("folder", root)


# -------------------------------------------------------------------------------- errors
def test_clear_errors_for_missing_roots_split_files_and_empty_sets(tmp_path):
    with pytest.raises(DataError, match=r"data\.root is not set"):
        build_data(load_config(None, ["data.name=voc"]).data)
    with pytest.raises(DataError, match=r"no JPEGImages/ .*VOCdevkit/VOC2012.*SegmentationClass"):
        data_for("voc", tmp_path)
    trees.make_voc(tmp_path)
    missing = tmp_path / "nope.txt"
    with pytest.raises(
        DataError, match=r"data\.labeled=.*nope\.txt: file not found.*one id per line"
    ):
        data_for("voc", tmp_path, f"data.labeled={missing}")
    bad = write(tmp_path / "bad.txt", ["a b c"])
    with pytest.raises(DataError, match=r"bad\.txt, line 1: 3 fields"):
        data_for("voc", tmp_path, f"data.labeled={bad}")
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt not found"):
        data_for("voc", tmp_path)
    # a listed id whose files do not exist: named before training starts
    ghost = write(tmp_path / "ghost.txt", ["2099_000001"])
    with pytest.raises(DataError, match=r"2099_000001\.jpg: image file is missing"):
        data_for("voc", tmp_path, f"data.labeled={ghost}", f"data.val={ghost}")
    # a folder dataset without any mask: empty labelled set
    root = trees.make_folder(tmp_path / "f")
    for p in (root / "train" / "masks").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"labeled set .* is empty.*train/masks"):
        data_for("folder", root)


def test_semi_supervised_training_needs_unlabelled_images(tmp_path, capsys):
    trees.make_cityscapes(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "demo",
                "data.name=cityscapes",
                f"data.root={tmp_path}",
                *TRAIN,
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unlabelled set of data.name=cityscapes is empty" in err and "data.labeled" in err


# -------------------------------------------------------------------------------- splits
def test_draw_split_is_reproducible_and_nested(tmp_path):
    root = trees.make_folder(tmp_path, n_train=10)
    cands = data_for("folder", root).labeled.entries
    a, rest = draw_split(cands, 3, None, seed=0)
    b, _ = draw_split(list(reversed(cands)), 3, None, seed=0)  # input order does not matter
    assert [e.name for e in a] == [e.name for e in b] and len(rest) == 7
    big, _ = draw_split(cands, None, 0.5, seed=0)
    assert len(big) == 5 and {e.name for e in a} <= {e.name for e in big}
    other, _ = draw_split(cands, 3, None, seed=1)
    assert [e.name for e in other] != [e.name for e in a]
    with pytest.raises(DataError, match="cannot draw 11"):
        draw_split(cands, 11, None, seed=0)


def test_splits_command_writes_files_that_read_back(tmp_path, capsys):
    trees.make_voc(tmp_path)
    out = tmp_path / "splits"
    main(
        [
            "splits",
            "--root",
            str(tmp_path),
            "--dataset",
            "voc",
            "--labeled",
            "2",
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    lab = (out / "labeled.txt").read_text().split("\n")
    assert len([x for x in lab if x]) == 2
    first = lab[0].split()
    assert first[0].startswith("VOCdevkit/VOC2012/JPEGImages/") and len(first) == 2
    b = data_for(
        "voc",
        tmp_path,
        f"data.labeled={out / 'labeled.txt'}",
        f"data.unlabeled={out / 'unlabeled.txt'}",
    )
    # classic: labelled drawn from train.txt; everything else of the augmented set unlabelled
    assert set(names(b.labeled)) <= set(trees.VOC_TRAIN)
    assert set(names(b.labeled)) | set(names(b.unlabeled)) == set(
        trees.VOC_TRAIN + trees.VOC_AUG_ONLY
    )
    again = tmp_path / "again"
    main(
        [
            "splits",
            "--root",
            str(tmp_path),
            "--dataset",
            "voc",
            "--labeled",
            "2",
            "--seed",
            "0",
            "--out",
            str(again),
        ]
    )
    assert (again / "labeled.txt").read_text() == (out / "labeled.txt").read_text()
    # blended: candidates are the whole augmented set
    main(
        [
            "splits",
            "--root",
            str(tmp_path),
            "--dataset",
            "voc",
            "--fraction",
            "1.0",
            "--blended",
            "--out",
            str(tmp_path / "all"),
        ]
    )
    assert len((tmp_path / "all" / "labeled.txt").read_text().split()) == 2 * 7
    assert "wrote" in capsys.readouterr().out


def test_splits_without_sbd(tmp_path, capsys):
    trees.make_voc(tmp_path, sbd=False)
    out = tmp_path / "splits"
    args = ["splits", "--root", str(tmp_path), "--dataset", "voc", "--labeled", "2"]
    main([*args, "--seed", "0", "--out", str(out)])
    b = data_for(
        "voc",
        tmp_path,
        f"data.labeled={out / 'labeled.txt'}",
        f"data.unlabeled={out / 'unlabeled.txt'}",
    )
    # classic: labelled from train.txt, every other non-val JPEG unlabelled
    assert set(names(b.labeled)) <= set(trees.VOC_TRAIN)
    assert set(names(b.labeled)) | set(names(b.unlabeled)) == set(
        trees.VOC_TRAIN + trees.VOC_AUG_ONLY + trees.VOC_NO_MASK
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args[:-2], "--fraction", "0.5", "--blended", "--out", str(tmp_path / "b")])
    assert "the blended VOC protocol draws from SBD's 10,582 masks" in capsys.readouterr().err


# ------------------------------------------------------------------------------- epochs
def test_epochs_define_the_number_of_steps():
    cfg = load_config("demo", ["data.batch_size=2", "data.batch_size_u=4", "train.epochs=3"])
    assert steps_per_epoch(cfg, num_labeled=10) == 5
    assert total_steps(cfg, steps_per_epoch(cfg, 10)) == 15
    cfg = load_config(
        "demo",
        [
            "data.batch_size=2",
            "data.batch_size_u=4",
            "train.epochs=3",
            "train.epoch_unit=unlabeled",
        ],
    )
    assert steps_per_epoch(cfg, 10, world_size=2, num_unlabeled=41) == 5  # 41 // (4 * 2)
    assert total_steps(cfg, 5) == 15
    with pytest.raises(ConfigError, match="epoch_unit=unlabeled"):
        steps_per_epoch(cfg, 10, num_unlabeled=0)
    cfg = load_config("demo", ["train.steps=7"])
    assert total_steps(cfg, 5) == 7  # train.epochs unset: train.steps


# ---------------------------------------------------------------------- CLI train runs
TRAIN = [
    "model.name=unet-r18",
    "model.pretrained=null",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.steps=2",
    "train.eval_every=2",
    "train.ckpt_every=2",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "eval.batch_size=2",
]


def _train(tmp_path, capsys, *overrides: str) -> dict:
    out = tmp_path / "run"
    main(["train", "demo", *TRAIN, *overrides, "--out", str(out)])
    assert "done: 2 steps" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["step"] == 2
    return ckpt


@pytest.mark.parametrize("sbd", [True, False])
def test_train_cli_on_voc(tmp_path, capsys, sbd):
    # epochs over the unlabelled set, as the VOC paper configs: without SBD this used to stop
    # with "the unlabelled set is empty"
    trees.make_voc(tmp_path, sbd=sbd)
    ckpt = _train(
        tmp_path, capsys, "data.name=voc", f"data.root={tmp_path}", "train.epoch_unit=unlabeled"
    )
    assert len(ckpt["classes"]) == 21


def test_train_cli_on_cityscapes(tmp_path, capsys):
    trees.make_cityscapes(tmp_path)
    split = write(
        tmp_path / "lab.txt",
        [
            "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
            "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png",
            "leftImg8bit/train/jena/jena_000000_000019_leftImg8bit.png "
            "gtFine/train/jena/jena_000000_000019_gtFine_labelTrainIds.png",
        ],
    )
    ckpt = _train(
        tmp_path,
        capsys,
        "data.name=cityscapes",
        f"data.root={tmp_path / 'cityscapes'}",
        f"data.labeled={split}",
        "eval.mode=sliding",
        "eval.crop_size=32",
        "eval.stride=21",
    )
    assert ckpt["classes"][0] == "road"


def test_train_cli_on_ade20k(tmp_path, capsys):
    trees.make_ade20k(tmp_path)
    split = write(tmp_path / "lab.txt", trees.ADE_TRAIN[:2])
    ckpt = _train(
        tmp_path,
        capsys,
        "data.name=ade20k",
        f"data.root={tmp_path}",
        f"data.labeled={split}",
        "eval.mode=resize",
        "eval.short_side=24",
        "data.base_size=32",
    )
    assert len(ckpt["classes"]) == 150


def test_train_cli_on_folder_with_maskless_unlabelled_images(tmp_path, capsys):
    root = trees.make_folder(tmp_path)
    # 4 labelled images, batch 2: one epoch is 2 steps
    ckpt = _train(
        tmp_path,
        capsys,
        "data.name=folder",
        f"data.root={root}",
        "train.epochs=1",
        "train.steps=999",
    )
    assert ckpt["classes"] == ["background", "cat", "dog"]
    assert list(ckpt["palette"][1]) == [255, 0, 0]
