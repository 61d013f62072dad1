"""Issue 18, item 1: one image reader for training, eval, check and predict (EXIF orientation,
16-bit and float images)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from dualteacher.config import load_config
from dualteacher.data import build_data
from dualteacher.data.files import decode_image
from dualteacher.errors import BadSampleError
from dualteacher.serving.inputs import read_image as predict_read
from dualteacher.study.check import check_data, format_report

from . import trees

ORIENTATION = 0x0112


def _folder(tmp_path):
    root = trees.make_folder(tmp_path)
    return root, load_config(None, ["data.name=folder", f"data.root={root}"])


def _replace_image(root, name: str, suffix: str):
    """Remove train image ``name``.jpg; return the path to write in its place."""
    (root / "train" / "images" / f"{name}.jpg").unlink()
    return root / "train" / "images" / f"{name}{suffix}"


def _sample(cfg, path):
    """The labelled training sample read from ``path``."""
    labeled = build_data(cfg.data).labeled
    index = next(i for i, e in enumerate(labeled.entries) if e.image == path)
    return labeled.load(index)


def test_16_bit_grey_png_is_scaled_by_its_range_in_training_and_predict(tmp_path):
    root, cfg = _folder(tmp_path)
    path = _replace_image(root, "img0", ".png")
    values = np.tile(np.linspace(0, 4095, trees.W).astype(np.uint16), (trees.H, 1))  # 12-bit
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    sample = _sample(cfg, path)
    # before: Image.convert("RGB") saturated every value above 255: a white image
    assert sample.image.min() == 0 and sample.image.max() == 255
    assert np.array_equal(sample.image[..., 0], np.rint(values / 4095 * 255).astype(np.uint8))
    assert np.array_equal(predict_read(path), sample.image)
    report = check_data(cfg, workers=1)
    assert report.ok
    text = format_report(report)
    assert "1 labeled image(s) have more than 8 bits per channel" in text
    assert f"{path}: 16-bit grey PNG, values 0..4095: stretched to 0..255" in text


def test_float_tiff_is_read_in_its_0_1_range(tmp_path):
    root, cfg = _folder(tmp_path)
    path = _replace_image(root, "img1", ".tif")
    values = np.random.default_rng(0).uniform(0.2, 0.6, (trees.H, trees.W)).astype(np.float32)
    Image.fromarray(values).save(path)
    sample = _sample(cfg, path)
    # before: clipped to 0..1 of 0..255, a black image
    assert np.array_equal(sample.image[..., 1], np.rint(values * 255).astype(np.uint8))
    assert np.array_equal(predict_read(path), sample.image)


def test_16_bit_colour_tiff_keeps_every_bit(tmp_path):
    root, cfg = _folder(tmp_path)
    path = _replace_image(root, "img2", ".tif")
    values = np.random.default_rng(1).integers(1000, 3001, (trees.H, trees.W, 3), np.uint16)
    tifffile.imwrite(path, values, photometric="rgb")
    sample = _sample(cfg, path)
    lo, hi = int(values.min()), int(values.max())
    expect = np.rint((values - lo) * (255 / (hi - lo))).astype(np.uint8)
    assert np.array_equal(sample.image, expect)  # Pillow alone keeps only the high bytes: 3..11


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("nan float", "a float grey TIFF with NaN or infinite values"),
        ("dark 16-bit colour png", "a 16-bit colour PNG that uses only part of its range"),
    ],
)
def test_deep_images_that_cannot_be_scaled_are_refused_naming_the_file(tmp_path, kind, reason):
    if kind == "nan float":
        path = tmp_path / "x.tif"
        values = np.ones((8, 8), np.float32)
        values[2, 2] = np.nan
        Image.fromarray(values).save(path)
    else:
        path = tmp_path / "x.png"
        _write_png16_rgb(path, np.full((8, 8, 3), 3000, np.uint16))
    with pytest.raises(BadSampleError, match=reason) as e:
        decode_image(path)
    assert e.value.path == path and "Fix:" in str(e.value)
    with pytest.raises(ValueError, match=reason):
        predict_read(path)


def _write_png16_rgb(path, values):
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def _phone_photo(root, name: str, mask_turned: bool):
    """Train image ``name`` stored landscape with EXIF orientation 6 (turn 90 degrees clockwise:
    viewers show it portrait); its mask drawn on the turned image, or on the stored one."""
    path = _replace_image(root, name, ".jpg")
    stored = trees.image(7)  # (H, W, 3)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    mask = trees.halves(0, 1)  # (H, W): the stored size
    trees.save_mask(
        root / "train" / "masks" / f"{name}.png", np.rot90(mask, -1) if mask_turned else mask
    )
    return path


def test_rotated_phone_photo_is_read_turned_in_training_and_predict(tmp_path):
    root, cfg = _folder(tmp_path)
    path = _phone_photo(root, "img3", mask_turned=True)
    sample = _sample(cfg, path)
    assert sample.image.shape[:2] == (trees.W, trees.H) == sample.mask.shape  # portrait
    assert np.array_equal(predict_read(path), sample.image)
    stored = np.asarray(Image.open(path))
    assert np.array_equal(sample.image, np.rot90(stored, -1))
    report = check_data(cfg, workers=1)
    # before: training read the stored landscape pixels and check told to resize the mask
    assert report.ok, format_report(report)
    assert "1 labeled image(s) carry an EXIF orientation" in format_report(report)


def test_mask_of_the_stored_orientation_is_told_to_turn_not_resize(tmp_path):
    root, cfg = _folder(tmp_path)
    path = _phone_photo(root, "img3", mask_turned=False)
    report = check_data(cfg, workers=1)
    (problem,) = report.sets[0].problems
    assert problem.path == root / "train" / "masks" / "img3.png"
    assert f"the size of its image {path} as stored" in str(problem)
    assert "EXIF orientation 6 (rotated 90 degrees clockwise)" in str(problem)
    assert "turn the mask the same way" in problem.fix and "do not resize" in problem.fix
    assert "nearest-neighbour" not in str(problem)
