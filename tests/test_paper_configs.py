"""Every shipped config through every verb, as a user runs them (``dualteacher ...``): train a
few steps, ``eval --report``, ``predict``, ``compare --steps 2``, ``compare --minutes`` with a
tiny budget and ``bench --data``, on tiny trees in each dataset's on-disk format (``trees``).

Only the heavy parts are overridden (model unet-r18 without pretrained weights, crop 32, batch
2, small evaluation windows, 1-2 epochs); each config keeps its own structure: dataset, split
file keys (the split files sit where the configs name them, relative to ``data.root``),
``train.epochs`` and ``train.epoch_unit``, evaluation mode, optimizer, method settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualteacher.cli import main
from dualteacher.config import builtin_config_dir, load_config
from dualteacher.engine.checkpoint import load_checkpoint

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


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


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


def _voc_blended(tmp: Path) -> tuple[list[str], int, Path]:
    voc = trees.make_voc(tmp)
    split = voc / "splits" / "pascal" / "u2pl_1_16"  # U2PL's id lists, under data.root
    _lines(split / "labeled.txt", ["2007_000032", "2008_000001"])
    _lines(split / "unlabeled.txt", ["2007_000039", "2007_000063", "2007_000068", "2008_000002"])
    return [f"data.root={voc}", "train.epochs=1"], 2, voc / "JPEGImages" / "2007_000033.jpg"


def _cityscapes(tmp: Path) -> tuple[list[str], int, Path]:
    cs = trees.make_cityscapes(tmp)
    split = cs / "splits" / "cityscapes" / "1_16"  # UniMatch's pairs, under data.root

    def image(city: str, base: str) -> str:
        return f"leftImg8bit/train/{city}/{base}_leftImg8bit.png"

    _lines(
        split / "labeled.txt",
        [
            f"{image(c, b)} gtFine/train/{c}/{b}_gtFine_labelTrainIds.png"
            for c, b in trees.CS_TRAIN[:2]
        ],
    )
    _lines(split / "unlabeled.txt", [image(c, b) for c, b in trees.CS_TRAIN[2:]])
    windows = ["eval.crop_size=32", "eval.stride=21"]  # the config's 801 / 534, scaled
    val_image = cs / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    return [f"data.root={cs}", "train.epochs=2", *windows], 2, val_image


def _ade20k(tmp: Path) -> tuple[list[str], int, Path]:
    ade = trees.make_ade20k(tmp)
    # Dual Teacher's lists name physically split folders; they sit in data.root
    named = [f"images/training1263_l/{n}.jpg" for n in trees.ADE_TRAIN[:2]]
    _lines(ade / "training1263_l.txt", named)
    _lines(
        ade / "training1263_u.txt", [f"images/training1263_u/{n}.jpg" for n in trees.ADE_TRAIN[2:]]
    )
    sizes = ["data.base_size=32", "eval.short_side=32"]  # the config's 512, scaled
    val_image = ade / "images" / "validation" / f"{trees.ADE_VAL[0]}.jpg"
    return [f"data.root={ade}", "train.epochs=2", *sizes], 2, val_image


CONFIGS = {
    "demo": _demo,
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
