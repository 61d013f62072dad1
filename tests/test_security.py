"""Hostile inputs for every reader (issue 28, SECURITY.md): export folders, split and id lists,
archives, decompression bombs, output folders with links, YAML with Python tags.

Each test feeds a file as someone else could craft it and checks that the command refuses it
with one line naming the file (exit 2), reads nothing outside its folder, writes nothing
outside ``--out`` and runs nothing.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import tifffile
from PIL import Image, ImageFile

from dualteacher.cli import main
from dualteacher.config import MAX_IMAGE_PIXELS, load_config, to_dict
from dualteacher.data import build_data
from dualteacher.data.demo import CLASSES, PALETTE
from dualteacher.data.files import decode_image, read_mask
from dualteacher.engine.run import check_resume_config
from dualteacher.engine.trainer import train
from dualteacher.errors import BadSampleError, CheckpointError, ConfigError, DataError, WriteError
from dualteacher.models import build_model
from dualteacher.serving.export import export_model
from dualteacher.serving.export_format import read_export
from dualteacher.serving.predict import predict
from dualteacher.serving.pseudolabel import pseudolabel
from dualteacher.serving.segmenter import load_exported

from . import trees
from .conftest import TINY

SRC = Path(__file__).resolve().parents[1] / "src" / "dualteacher"


def _one_line_error(capsys, code: int) -> str:
    """The CLI's error: exit 2 and one line (progress bars aside)."""
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if ln.strip() and not ln.startswith("predict:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


# ---------------------------------------------------------------------------- export folders
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A safetensors export of an untrained tiny model (no training needed: only the folder's
    handling is under test)."""
    cfg = load_config("demo", TINY)
    net = build_model(cfg.model, len(CLASSES), verbose=False)
    out = tmp_path_factory.mktemp("export") / "model"
    export_model(net, cfg, CLASSES, PALETTE, out, "safetensors")
    return out


@pytest.fixture
def export_copy(export_dir, tmp_path) -> Path:
    out = tmp_path / "shared_export"
    shutil.copytree(export_dir, out)
    return out


def _set_file(folder: Path, fmt: str, **fields) -> None:
    meta = folder / "model.json"
    info = json.loads(meta.read_text())
    info["files"].setdefault(fmt, {}).update(fields)
    meta.write_text(json.dumps(info))


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_export_file_names_outside_the_folder_are_refused(export_copy, tmp_path, kind):
    # A valid weight file (right size and hash) outside the export: only the path is wrong.
    outside = tmp_path / "elsewhere" / "model.safetensors"
    outside.parent.mkdir()
    shutil.copy(export_copy / "model.safetensors", outside)
    name = "../elsewhere/model.safetensors" if kind == "dotdot" else str(outside)
    _set_file(export_copy, "safetensors", name=name)
    with pytest.raises(CheckpointError) as e:
        read_export(export_copy)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{export_copy / 'model.json'}: files.safetensors.name" in msg
    assert "leads outside the export folder" in msg


def test_export_file_that_links_outside_is_refused(export_copy, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(export_copy / "model.safetensors", outside)
    (export_copy / "model.safetensors").symlink_to(outside)  # same bytes, same hash
    with pytest.raises(CheckpointError, match=r"json: files\.safetensors\.name .* is a link"):
        read_export(export_copy)


def test_export_with_a_name_outside_exits_2_on_predict(export_copy, tmp_path, capsys):
    _set_file(export_copy, "safetensors", name="../../model.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(trees.image(0)).save(image)
    code = _run(["predict", str(export_copy), str(image), "--out", str(tmp_path / "pred")])
    err = _one_line_error(capsys, code)
    assert "files.safetensors.name '../../model.safetensors' leads outside" in err
    assert not (tmp_path / "pred").exists()


def test_export_hash_is_checked_before_safetensors_reads_the_file(export_copy, monkeypatch):
    weights = export_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    opened = []
    monkeypatch.setattr(safetensors.torch, "load_model", lambda *a, **k: opened.append(a))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or was replaced"):
        load_exported(export_copy, device="cpu")
    assert opened == []  # the parser never saw the file


def test_export_hash_is_checked_before_onnx_runtime_opens_the_file(export_copy, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    fake = export_copy / "model.onnx"
    fake.write_bytes(b"not the exported graph")
    _set_file(export_copy, "onnx", name="model.onnx", bytes=fake.stat().st_size, sha256="0" * 64)
    opened = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: opened.append(a))
    with pytest.raises(CheckpointError, match=r"model\.onnx is damaged or was replaced"):
        load_exported(export_copy, runtime="onnx")
    assert opened == []


@pytest.mark.parametrize(
    "entry",
    [{"name": 3, "bytes": 1, "sha256": "x"}, {"name": "model.safetensors"}, "model.safetensors"],
)
def test_export_malformed_file_entries_are_one_line(export_copy, entry):
    meta = export_copy / "model.json"
    info = json.loads(meta.read_text())
    info["files"]["safetensors"] = entry
    meta.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"files\.safetensors must record the file's name"):
        read_export(export_copy)


# ---------------------------------------------------------------------------- split files
def _folder_data(root: Path, *overrides: str):
    cfg = load_config(None, ["data.name=folder", f"data.root={root}", *overrides])
    return build_data(cfg.data)


def names(source) -> list[str]:
    return [e.name for e in source.entries]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_split_entries_outside_data_root_are_refused(tmp_path, kind):
    root = trees.make_folder(tmp_path)
    # a real image and mask outside the dataset: without the check they would be read
    secret = tmp_path / "private" / "photo.jpg"
    trees.save_rgb(secret, trees.image(1))
    trees.save_mask(secret.with_suffix(".png"), trees.halves(0, 1))
    entry = "../private/photo.jpg" if kind == "dotdot" else str(secret)
    mask = "../private/photo.png" if kind == "dotdot" else str(secret.with_suffix(".png"))
    split = _write_lines(tmp_path / "lab.txt", ["# shared", "img1", f"{entry} {mask}"])
    with pytest.raises(DataError) as e:
        _folder_data(root, f"data.labeled={split}")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{split}, line 3: {entry} leads outside data.root")
    assert "data.allow_outside_root=true" in msg
    # the user's own list, allowed on purpose
    bundle = _folder_data(root, f"data.labeled={split}", "data.allow_outside_root=true")
    assert secret in {Path(p).resolve() for p in bundle.labeled.entries.iter_images()}


def test_split_mask_outside_data_root_is_refused(tmp_path):
    root = trees.make_folder(tmp_path)
    outside = tmp_path / "other.png"
    trees.save_mask(outside, trees.halves(0, 1))
    split = _write_lines(tmp_path / "lab.txt", ["train/images/img1.jpg ../other.png"])
    with pytest.raises(DataError, match=r"lab\.txt, line 1: \.\./other\.png leads outside"):
        _folder_data(root, f"data.labeled={split}")


def test_unlabeled_split_outside_root_refused_after_the_probed_lines(tmp_path):
    # An unlabelled list is looked up on disk for its first 16 lines only; later lines take a
    # fast path that must check too.
    root = trees.make_folder(tmp_path, n_unlabeled=20)
    lines = [f"unlabeled/u{i}.jpg" for i in range(20)] + ["unlabeled/../../escape.jpg"]
    split = _write_lines(tmp_path / "unl.txt", lines)
    with pytest.raises(DataError, match=r"unl\.txt, line 21: unlabeled/\.\./\.\./escape\.jpg"):
        _folder_data(root, f"data.unlabeled={split}")


def test_stored_config_cannot_allow_outside_root_or_lift_the_pixel_limit():
    # A checkpoint's or export's config is someone else's file: its safety keys are dropped.
    stored = to_dict(load_config(None, ["data.allow_outside_root=true", "data.max_image_pixels=0"]))
    cfg = load_config(None, [], base=stored)
    assert cfg.data.allow_outside_root is False
    assert cfg.data.max_image_pixels == MAX_IMAGE_PIXELS
    # the user's own override still decides
    cfg = load_config(None, ["data.max_image_pixels=0"], base=stored)
    assert cfg.data.max_image_pixels == 0


def test_a_run_resumes_with_changed_safety_limits():
    # a genuine large image stops a run: raising the limit and resuming is the fix
    state = {"config": to_dict(load_config("demo", TINY))}
    raised = ["data.max_image_pixels=0", "data.allow_outside_root=true"]
    check_resume_config(state, load_config("demo", [*TINY, *raised]), "latest.pt")
    with pytest.raises(CheckpointError, match="another config"):  # other keys still count
        check_resume_config(state, load_config("demo", [*TINY, "optim.lr=0.5"]), "latest.pt")


def test_voc_id_list_with_a_path_is_refused(tmp_path):
    voc = trees.make_voc(tmp_path)
    ids = voc / "ImageSets" / "Segmentation" / "train.txt"
    ids.write_text(ids.read_text() + "../../../../private/photo\n")
    line = len(ids.read_text().splitlines())
    cfg = load_config(None, ["data.name=voc", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match=rf"train\.txt, line {line}: \.\./\.\./\.\./\.\./private"):
        build_data(cfg.data)


# ---------------------------------------------------------------------------- archives
def test_nothing_extracts_archives():
    # SECURITY.md says no reader extracts an archive (so no zip slip is possible); a new one
    # must come with a zip-slip guard and its test, and update this list.
    pattern = re.compile(r"extractall|\.extract\(|unpack_archive|import tarfile|ZipFile\(")
    # Files allowed to open a zip, and why no file can be written through them:
    allowed = {
        # CVAT exports: members read into memory by name (never to disk), each at most
        # MAX_ZIP_MEMBER_BYTES, image names refused when they lead outside the images folder
        # (tests/test_annotations.py::test_cvat_*_refused)
        "data/annotations.py",
        "serving/tool_export.py",  # writes its own cvat.zip; reads none
    }
    found = [
        f"{p.relative_to(SRC)}:{i}"
        for p in sorted(SRC.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
        and (p.relative_to(SRC).as_posix() not in allowed or "ZipFile(" not in line)
    ]
    assert found == []


# ---------------------------------------------------------------------------- images
def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header (IHDR) claims ``width`` x ``height``: a few dozen bytes
    that would decode to a huge image."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # chunk type + data
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail if any pixel is decoded: a refusal must come from the header alone."""

    def load(self):
        raise AssertionError(f"decoded {self.size} pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_png_bomb_refused_from_its_header_by_default(tmp_path, no_decoding):
    bomb = _png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 100
    with pytest.raises(BadSampleError) as e:
        decode_image(bomb)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bomb}: the image claims 100000x100000 = 10,000,000,000 pixels")
    assert f"above data.max_image_pixels={MAX_IMAGE_PIXELS:,}" in msg
    assert "raise the limit, e.g. data.max_image_pixels=10000000000 (0: no limit)" in msg


def test_pixel_limit_is_configurable_and_checked_before_decoding(tmp_path, no_decoding):
    # 5000 x 5000 (25 M pixels) passes Pillow's own checks: only the lowered limit refuses it.
    bomb = _png_claiming(tmp_path / "big.png", 5000, 5000)
    with pytest.raises(BadSampleError, match=r"above data\.max_image_pixels=1,000,000"):
        decode_image(bomb, 1_000_000)
    with pytest.raises(BadSampleError, match=r"above data\.max_image_pixels=1,000,000"):
        read_mask(bomb, 1_000_000)  # masks too


def test_tiff_read_by_tifffile_obeys_the_limit(tmp_path):
    # float RGB: Pillow cannot open it, tifffile reads it (decode_image's fallback)
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((40, 50, 3), np.float32))
    assert decode_image(path).array.shape == (40, 50, 3)
    with pytest.raises(BadSampleError, match=r"claims 50x40 = 2,000 pixels, above .*=1,000"):
        decode_image(path, 1000)


def test_dataset_images_obey_data_max_image_pixels(tmp_path):
    root = trees.make_folder(tmp_path)
    # train and val images are 36 x 44 = 1584 pixels, unlabelled ones 40 x 40 = 1600
    bundle = _folder_data(root, "data.max_image_pixels=1590")
    assert bundle.labeled.load(0).image.shape == (trees.H, trees.W, 3)
    with pytest.raises(BadSampleError, match=r"u0\.jpg: the image claims 40x40 = 1,600 pixels"):
        bundle.unlabeled.load(names(bundle.unlabeled).index("unlabeled/u0"))
    # validation images are checked from their headers before training starts
    with pytest.raises(DataError, match=r"v0\.png: the image claims 44x36 = 1,584 pixels"):
        _folder_data(root, "data.max_image_pixels=1583")


def test_predict_refuses_an_image_above_the_limit(export_dir, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(trees.image(0)).save(images / "ok.png")  # 36 x 44
    _png_claiming(images / "bomb.png", 5000, 5000)
    out = tmp_path / "pred"
    code = _run(
        ["predict", str(export_dir), str(images), "--out", str(out), "data.max_image_pixels=2000"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "bomb.png: the image claims 5000x5000 = 25,000,000 pixels" in err
    assert "ok.png: the image claims 44x36 = 1,584" not in err  # under the limit: predicted
    assert (out / "ok.png").is_file() and not (out / "bomb.png").exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(load_config("demo", [*TINY, f"train.out_dir={out}"]))
    return out / "best.pt"


def test_pseudolabel_refuses_an_image_above_the_limit(checkpoint, tmp_path):
    # suggest --images reads through the same ImageSet / logit_batches
    images = tmp_path / "photos"
    trees.save_rgb(images / "ok.png", trees.image(0))
    _png_claiming(images / "bomb.png", 5000, 5000)
    out = tmp_path / "pseudo"
    result = pseudolabel(
        checkpoint, [str(images)], out, overrides=["data.max_image_pixels=2000"], progress=False
    )
    assert [Path(p).name for p, _ in result.failed] == ["bomb.png"]
    assert "claims 5000x5000 = 25,000,000 pixels, above" in result.failed[0][1]
    assert (out / "masks" / "ok.png").is_file()


# ---------------------------------------------------------------------------- output folders
@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    trees.save_rgb(folder / "a.png", trees.image(0))
    trees.save_rgb(folder / "sub" / "b.png", trees.image(1))
    return folder


def test_predict_does_not_follow_a_folder_link_out_of_out(export_dir, photos, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "pred"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    code = _run(["predict", str(export_dir), str(photos), "--out", str(out)])
    err = _one_line_error(capsys, code)
    assert f"refusing to write {out / 'sub' / 'b.png'}: a symbolic link leads it outside" in err
    assert list(elsewhere.iterdir()) == []


def test_predict_does_not_write_through_a_file_link(export_dir, photos, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "pred"
    out.mkdir()
    (out / ".dualteacher_predict").symlink_to(victim)  # the manifest is appended to in place
    with pytest.raises(WriteError, match=r"\.dualteacher_predict: a symbolic link leads it"):
        predict(export_dir, [str(photos)], out, progress=False)
    assert victim.read_text() == "keep me"


def test_predict_into_an_out_that_is_itself_a_link_works(export_dir, photos, tmp_path):
    disk = tmp_path / "big_disk"
    disk.mkdir()
    out = tmp_path / "pred"
    out.symlink_to(disk, target_is_directory=True)  # a user's link to another disk: fine
    result = predict(export_dir, [str(photos)], out, progress=False)
    assert len(result.written) == 2 and (disk / "sub" / "b.png").is_file()


def test_pseudolabel_does_not_follow_a_folder_link_out_of_out(checkpoint, photos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "pseudo"
    out.mkdir()
    (out / "masks").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(WriteError, match=r"refusing to write .*masks/a\.png: a symbolic link"):
        pseudolabel(checkpoint, [str(photos)], out, progress=False)
    assert list(elsewhere.iterdir()) == []


def test_train_does_not_append_through_a_link_in_its_run_folder(tmp_path, capsys):
    # resuming a colleague's run folder: metrics.jsonl is appended to in place
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    code = _run(["train", "demo", *TINY, "--out", str(run)])
    err = _one_line_error(capsys, code)
    assert f"refusing to write {run / 'metrics.jsonl'}: a symbolic link leads it outside" in err
    assert victim.read_text() == "keep me"


def test_splits_does_not_write_through_a_link_in_out(tmp_path, capsys):
    root = trees.make_folder(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "splits"
    out.mkdir()
    (out / "labeled.txt").symlink_to(victim)
    argv = ["splits", "--root", str(root), "--dataset", "folder", "--labeled", "2"]
    code = _run([*argv, "--out", str(out)])
    err = _one_line_error(capsys, code)
    assert f"refusing to write {out / 'labeled.txt'}: a symbolic link leads it outside" in err
    assert victim.read_text() == "keep me"


def test_export_does_not_write_through_a_link_in_out(tmp_path, capsys):
    cfg = load_config("demo", TINY)
    net = build_model(cfg.model, len(CLASSES), verbose=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "export"
    out.mkdir()
    (out / ".model.safetensors.tmp").symlink_to(victim)
    # a folder no export made is refused first (issue 27); forced, the link is still refused
    with pytest.raises(ConfigError, match="holds files no export wrote"):
        export_model(net, cfg, CLASSES, PALETTE, out, "safetensors")
    with pytest.raises(WriteError, match=r"refusing to write .*\.model\.safetensors\.tmp"):
        export_model(net, cfg, CLASSES, PALETTE, out, "safetensors", force=True)
    assert victim.read_text() == "keep me"


# ---------------------------------------------------------------------------- YAML
EVIL = '!!python/object/apply:os.system ["touch {}"]'


def test_config_yaml_with_a_python_tag_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    # train.steps: were the tag ever run, os.system's 0 would be refused as a step count, so a
    # regression fails here at once instead of starting a training run
    config.write_text(f"train:\n  steps: {EVIL.format(marker)}\n")
    code = _run(["train", str(config)])
    err = _one_line_error(capsys, code)
    assert f"{config} is not valid YAML: could not determine a constructor" in err
    assert "python/object/apply:os.system" in err and "(line 2, column 10)" in err
    assert not marker.exists()


def test_override_with_a_python_tag_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"override 'train\.out_dir=!!python.*never loaded"):
        load_config(None, [f"train.out_dir={EVIL.format(marker)}"])
    assert not marker.exists()


def test_classes_yaml_with_a_python_tag_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    root = trees.make_folder(tmp_path)
    (root / "classes.yaml").write_text(f"classes: {EVIL.format(marker)}\n")
    with pytest.raises(DataError, match=r"classes\.yaml is not valid YAML: could not determine"):
        _folder_data(root)
    assert not marker.exists()


def test_a_run_resumes_when_only_settings_its_method_never_reads_changed():
    # compare reuses a finished supervised run by resuming it: a strong view or another
    # method's setting changed since cannot have changed that run, so it must not be refused
    sup = ["method.name=supervised", *TINY]
    state = {"config": to_dict(load_config("demo", sup))}
    unread = ["data.strong.hue=0.3", "data.batch_size_u=2", "method.unimatch.fp_dropout=0.3"]
    check_resume_config(state, load_config("demo", [*sup, *unread]), "latest.pt")
    with pytest.raises(CheckpointError, match="class_weights"):  # what it reads still counts
        check_resume_config(state, load_config("demo", [*sup, "method.class_weights=none"]), "p")
    # Dual Teacher reads the strong view (and its own section), not UniMatch's
    dt = ["method.name=dual_teacher", *TINY]
    state = {"config": to_dict(load_config("demo", dt))}
    check_resume_config(state, load_config("demo", [*dt, "method.unimatch.fp_dropout=0.3"]), "p")
    for changed in ["data.strong.hue=0.3", "method.dual_teacher.ic_weight=0.5"]:
        with pytest.raises(CheckpointError, match=changed.split("=")[0]):
            check_resume_config(state, load_config("demo", [*dt, changed]), "latest.pt")
