"""Every shipped config through every verb, as a user runs them (``dualteacher ...``): train a
few steps, ``eval --report``, ``predict``, ``compare --steps 2``, ``compare --minutes`` with a
tiny budget and ``bench --data``, on tiny trees in each dataset's on-disk format (``trees``),
with the split lists shipped with the package (``data.split``) and only ``data.root`` given.

Only the heavy parts are overridden (model unet-r18 without pretrained weights, crop 32, batch
2, small evaluation windows, 1-2 epochs of one step each: ``train.epoch_steps=1``); each config
keeps its own structure: dataset, split (``data.split``), ``train.epochs`` and
``train.epoch_unit``, evaluation mode, optimizer, method settings. Every image a shipped list
names is on disk (hard links to one tiny file)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import main
from dualteacher.config import builtin_config_dir, load_config
from dualteacher.data import standard_splits

from . import trees

SMALL = [
    "model.name=unet-r18",
    "model.pretrained=null",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "eval.batch_size=2",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.curves=false",
]


def _demo(tmp: Path) -> tuple[list[str], int, Path]:
    demo = ["data.demo.num_labeled=8", "data.demo.num_unlabeled=8", "data.demo.num_val=2"]
    demo += ["data.demo.image_size=32", "train.steps=2"]
    image = tmp / "scene.png"
    trees.save_rgb(image, trees.image(1))
    return demo, 2, image


def _voc_classic(tmp: Path) -> tuple[list[str], int, Path]:
    voc = trees.make_voc(tmp)
    # labelled: train.txt (4); unlabelled: the 3 SBD-only images, 1 step of 2 per epoch
    return [f"data.root={voc}", "train.epochs=2"], 2, voc / "JPEGImages" / "2007_000033.jpg"


def _shipped(name: str, part: str) -> list[list[str]]:
    path = standard_splits.SHIPPED_DIR / name / f"{part}.txt.gz"
    return [ln.split() for ln in gzip.decompress(path.read_bytes()).decode().splitlines() if ln]


def _link(source: Path, target: Path) -> None:
    """One tiny file under every name a shipped list gives (hard links: thousands are cheap)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(source, target)


# The shipped lists need every listed image on disk (the loaders check labelled files and
# read any unlabelled one); one epoch is one step, so the few steps read a handful of them.
ONE_STEP_EPOCHS = "train.epoch_steps=1"


def _voc_blended(tmp: Path) -> tuple[list[str], int, Path]:
    voc = trees.make_voc(tmp)  # + U2PL's 1/16 list (ids), shipped: data.split=voc/u2pl_1_16
    jpg, png = (
        voc / "JPEGImages" / "2007_000032.jpg",
        voc / "SegmentationClassAug" / "2007_000032.png",
    )
    for (name,) in _shipped("voc/u2pl_1_16", "labeled"):
        _link(jpg, voc / "JPEGImages" / f"{name}.jpg")
        _link(png, voc / "SegmentationClassAug" / f"{name}.png")
    for (name,) in _shipped("voc/u2pl_1_16", "unlabeled"):
        _link(jpg, voc / "JPEGImages" / f"{name}.jpg")
    args = [f"data.root={voc}", "train.epochs=1", ONE_STEP_EPOCHS]
    return args, 1, voc / "JPEGImages" / "2007_000033.jpg"


def _cityscapes(tmp: Path) -> tuple[list[str], int, Path]:
    cs = trees.make_cityscapes(tmp)  # + UniMatch's 1/16 pairs, shipped: cityscapes/1_16
    city, base = trees.CS_TRAIN[0]
    img = cs / "leftImg8bit" / "train" / city / f"{base}_leftImg8bit.png"
    raw = cs / "gtFine" / "train" / city / f"{base}_gtFine_labelIds.png"
    for image, mask in _shipped("cityscapes/1_16", "labeled"):
        _link(img, cs / image)  # the raw *_labelIds.png stands in for the listed TrainIds
        _link(raw, cs / mask.replace("_labelTrainIds.png", "_labelIds.png"))
    for image, *_ in _shipped("cityscapes/1_16", "unlabeled"):
        _link(img, cs / image)
    windows = ["eval.crop_size=32", "eval.stride=21"]  # the config's 801 / 534, scaled
    val_image = cs / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    return [f"data.root={cs}", "train.epochs=2", ONE_STEP_EPOCHS, *windows], 2, val_image


def _ade20k(tmp: Path) -> tuple[list[str], int, Path]:
    ade = trees.make_ade20k(tmp)  # + Dual Teacher's 1263 lists, shipped: ade20k/1263
    jpg = ade / "images" / "training" / f"{trees.ADE_TRAIN[0]}.jpg"
    png = ade / "annotations" / "training" / f"{trees.ADE_TRAIN[0]}.png"
    # the lists name physically split folders; the standard layout is found by file name
    for (image,) in _shipped("ade20k/1263", "labeled"):
        stem = Path(image).stem
        _link(jpg, ade / "images" / "training" / f"{stem}.jpg")
        _link(png, ade / "annotations" / "training" / f"{stem}.png")
    for (image,) in _shipped("ade20k/1263", "unlabeled"):
        _link(jpg, ade / "images" / "training" / f"{Path(image).stem}.jpg")
    sizes = ["data.base_size=32", "eval.short_side=32"]  # the config's 512, scaled
    val_image = ade / "images" / "validation" / f"{trees.ADE_VAL[0]}.jpg"
    return [f"data.root={ade}", "train.epochs=2", ONE_STEP_EPOCHS, *sizes], 2, val_image


def _photos(tmp: Path) -> tuple[list[str], int, Path]:
    data = trees.make_folder(tmp)  # the user's own folder, as configs/photos.yaml expects
    return [f"data.root={data}", "train.steps=2"], 2, data / "val" / "images" / "v0.png"


CONFIGS = {
    "demo": _demo,
    "photos": _photos,
    "voc_classic_r101_321": _voc_classic,
    "voc_blended_r101_513": _voc_blended,
    "cityscapes_r101_801": _cityscapes,
    "ade20k_mitb1_512": _ade20k,
}


def test_every_shipped_config_is_in_the_matrix():
    assert sorted(p.stem for p in builtin_config_dir().glob("*.yaml")) == sorted(CONFIGS)


def _run(capsys, *args) -> str:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        out = capsys.readouterr()
        pytest.fail(f"dualteacher {' '.join(map(str, args[:2]))} exited {e.code}: {out.err}")
    return capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_verb_on_a_paper_config(name, tmp_path, capsys):
    overrides, steps, image = CONFIGS[name](tmp_path / "data")
    overrides = [*SMALL, *overrides]
    shipped = load_config(name)
    cfg = load_config(name, overrides)
    # what the matrix keeps of the config
    for key in ("epoch_unit", "deterministic", "amp"):
        assert getattr(cfg.train, key) == getattr(shipped.train, key)
    assert (cfg.train.epochs is None) == (shipped.train.epochs is None)
    assert (cfg.data.labeled, cfg.data.unlabeled) == (shipped.data.labeled, shipped.data.unlabeled)
    assert cfg.data.split == shipped.data.split  # the shipped split, with only data.root given
    assert cfg.eval.mode == shipped.eval.mode and cfg.optim == shipped.optim
    assert cfg.method == shipped.method and cfg.data.name == shipped.data.name

    run = tmp_path / "run"
    out = _run(capsys, "train", name, *overrides, "--out", run)
    assert f"done: {steps} steps" in out
    assert load_checkpoint(run / "latest.pt")["step"] == steps

    report = tmp_path / "report"
    _run(capsys, "eval", run / "latest.pt", "--report", report, "--samples", 1)
    iou = json.loads((report / "iou.json").read_text())
    assert iou["eval"]["mode"] == shipped.eval.mode.value and iou["step"] == steps
    assert len(iou["classes"]) == len(load_checkpoint(run / "latest.pt")["classes"])

    _run(capsys, "predict", run / "latest.pt", image, "--out", tmp_path / "pred")
    assert (tmp_path / "pred" / f"{image.stem}_overlay.png").is_file()

    method = shipped.method.name
    cmp = tmp_path / "cmp_steps"
    _run(capsys, "compare", name, *overrides, "--methods", method, "--steps", 2, "--out", cmp)
    (row,) = json.loads((cmp / "summary.json").read_text())["results"]
    assert row["steps"] == 2

    cmp = tmp_path / "cmp_minutes"
    _run(capsys, "compare", name, *overrides, "--methods", method, "--minutes", 0.001, "--out", cmp)
    (row,) = json.loads((cmp / "summary.json").read_text())["results"]
    assert row["probe_step_seconds"] > 0 and 1 <= row["steps"] <= row["planned_steps"]

    out = _run(capsys, "bench", "--config", name, *overrides, "--data", "--steps", 1,
               "--warmup", 0, "--json")  # fmt: skip
    result = json.loads(out)
    assert result["data"] == "real" and result["method"] == method
    assert result["classes"] == iou["classes"].__len__() and result["overhead_ratio"] > 0
