"""``dualteacher predict``: folders, odd sizes, unreadable inputs, palette PNGs."""

import json

import numpy as np
import pytest
from PIL import Image

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data.demo import CLASSES, PALETTE
from dualteacher.engine.trainer import train
from dualteacher.serving.inputs import collect_inputs
from dualteacher.serving.predict import predict

from .conftest import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_run")
    train(load_config("demo", [*TINY, f"train.out_dir={out}"]))
    return out / "best.pt"


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / "a.png")
    # grayscale JPEG, odd size, in a sub-folder
    Image.fromarray(rng.integers(0, 256, (41, 29), dtype=np.uint8)).save(folder / "sub/b.jpg")
    (folder / "broken.jpg").write_bytes(rng.bytes(300))  # random bytes named .jpg
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_with_corrupt_file(checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "pred"
    argv = ["predict", str(checkpoint), str(image_folder), str(tmp_path / "missing.png")]
    # a sliding-window override exercises windows on the 53 px side (crop 32, stride 16)
    argv += ["eval.mode=sliding", "eval.crop_size=32", "eval.stride=16", "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2  # some inputs could not be read (the user's input); the rest written
    captured = capsys.readouterr()
    assert "wrote 2 prediction(s)" in captured.out
    assert "skipped 1 non-image file(s)" in captured.out
    assert "2 input(s) failed" in captured.err
    assert "broken.jpg: cannot read the image (cannot identify image file" in captured.err
    assert "missing.png: no such file" in captured.err

    for name, src in [("a", image_folder / "a.png"), ("sub/b", image_folder / "sub/b.jpg")]:
        size = Image.open(src).size
        index = Image.open(out / f"{name}.png")
        assert index.mode == "P" and index.size == size
        ids = np.asarray(index)
        assert ids.shape == size[::-1] and ids.max() < len(CLASSES)
        palette = np.array(index.getpalette()[: 3 * len(CLASSES)]).reshape(-1, 3)
        assert palette.tolist() == [list(c) for c in PALETTE]
        color = Image.open(out / f"{name}_color.png")
        assert color.mode == "RGB" and color.size == size
        assert np.array_equal(np.asarray(color), np.array(PALETTE, dtype=np.uint8)[ids])
        over = Image.open(out / f"{name}_overlay.png")
        assert over.mode == "RGB" and over.size == size
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "a.png",
        "a_color.png",
        "a_overlay.png",
        "legend.png",  # the classes and their colours (issue 27)
        "sub/b.png",
        "sub/b_color.png",
        "sub/b_overlay.png",
    ]
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == CLASSES


def test_predict_needs_no_training_data_and_writes_each_model(
    checkpoint, image_folder, tmp_path, monkeypatch
):
    import dualteacher.engine.run as run

    def no_data(*args, **kwargs):
        raise AssertionError("predict must not build the training data")

    monkeypatch.setattr(run, "build_data", no_data)
    out = tmp_path / "pred_all"
    result = predict(checkpoint, [str(image_folder / "*.png")], out, models="all", progress=False)
    assert not result.failed and len(result.written) == 1
    for model in ("student", "teacher_a", "teacher_b"):
        index = Image.open(out / model / "a.png")
        assert index.mode == "P" and index.size == (53, 37)


def test_collect_inputs_names_are_unique(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (5, 5)).save(tmp_path / d / "img.png")
    files = [str(tmp_path / "x/img.png"), str(tmp_path / "y/img.png"), str(tmp_path / "x/img.png")]
    items, failed, skipped, previous = collect_inputs(files)
    assert [i.name for i in items] == ["img", "img_2"]  # the repeated file is predicted once
    assert not failed and not skipped and not previous


def _photos(folder):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for name in ("a", "z", "z_overlay"):  # z's overlay would be z_overlay.png
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            folder / f"{name}.jpg"
        )
    return folder


@pytest.mark.parametrize("where", ["inside", "same"])
def test_predict_leaves_out_its_outputs_and_never_overwrites_one(checkpoint, tmp_path, where):
    photos = _photos(tmp_path / "photos")
    out = photos / "pred" if where == "inside" else photos
    first = predict(checkpoint, [str(photos)], out, progress=False)
    assert len(first.written) == 3 and not first.failed and not first.previous_outputs
    # z_overlay.png would have been both z's overlay and z_overlay's class ids: renamed
    indexes = {p.relative_to(out).as_posix() for p in first.written}
    assert indexes == {"a.png", "z.png", "z_overlay_2.png"}
    assert Image.open(out / "z_overlay.png").mode == "RGB"  # z's overlay
    assert Image.open(out / "z_overlay_2.png").mode == "P"  # z_overlay's class ids
    assert len(list(out.glob("*.png"))) == 10  # 3 files for each of the 3 photos, legend.png
    if where == "inside":  # the output folder is left out as such (e.g. an older version's)
        (out / ".dualteacher_predict").unlink()
    before = sorted(p for p in photos.rglob("*") if p.name != ".dualteacher_predict")
    # predicting the folder again reads the same three photos, not the outputs
    second = predict(checkpoint, [str(photos)], out, progress=False)
    assert {p.relative_to(out).as_posix() for p in second.written} == indexes
    assert len(second.previous_outputs) == 10 and not second.failed  # legend.png too
    after = sorted(p for p in photos.rglob("*") if p.name != ".dualteacher_predict")
    assert after == before  # no pred/pred/, no a_2.png
