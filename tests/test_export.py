"""``dualteacher export`` and predicting from an export: safetensors, model.json, model card,
ONNX Runtime against PyTorch for each model family, bad export directories."""

import contextlib
import io
import json
import shutil
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_model

from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data.demo import CLASSES, PALETTE
from dualteacher.engine.trainer import train
from dualteacher.models import build_model
from dualteacher.serving.export import export_model
from dualteacher.serving.export_format import read_export
from dualteacher.serving.predict import predict
from dualteacher.serving.segmenter import OnnxModel, load_exported
from dualteacher.serving.trained import build_model_from_checkpoint

from .conftest import TINY

pytest.importorskip("onnxruntime", reason="the dev extra installs onnxruntime")


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """The demo model (unet-effl0, demo normalisation) after 4 tiny Dual Teacher steps,
    validated at steps 2 and 4."""
    out = tmp_path_factory.mktemp("export_run")
    train(load_config("demo", [*TINY, "model.name=unet-effl0", f"train.out_dir={out}"]))
    return out / "latest.pt"


@pytest.fixture(scope="module")
def demo_export(demo_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", str(demo_checkpoint), "--out", str(out), "--format", "safetensors,onnx"])
    (out.parent / "printed.txt").write_text(printed.getvalue())
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (41, 29), dtype=np.uint8)).save(folder / "c.jpg")
    return folder


def _ids(folder, names=("a", "b", "c")):
    return {n: np.asarray(Image.open(folder / f"{n}.png")) for n in names}


def test_export_writes_weights_card_and_metadata(demo_checkpoint, demo_export):
    state = load_checkpoint(demo_checkpoint)
    assert sorted(p.name for p in demo_export.iterdir()) == [
        "README.md",
        "model.json",
        "model.onnx",
        "model.safetensors",
    ]
    info = json.loads((demo_export / "model.json").read_text())
    assert info["architecture"]["name"] == "unet-effl0"
    assert info["exported_model"] == "student"
    assert info["classes"] == CLASSES
    assert info["palette"] == [list(c) for c in PALETTE]
    assert info["input"]["normalization"]["mean"] == [0.5, 0.5, 0.5]  # the demo's, not ImageNet
    assert info["input"]["normalization"]["std"] == [0.5, 0.5, 0.5]
    assert (
        info["input"]["size_divisor"] == 32 and "any height and width" in info["input"]["size_rule"]
    )
    trained_with = json.loads(json.dumps(state["config"]))  # tuples as JSON lists
    assert info["config"] == trained_with and info["inference"] == trained_with["eval"]
    assert [h["step"] for h in state["history"]] == [2, 4]
    last = state["history"][-1]
    assert info["metrics"]["step"] == last["step"] == state["step"] == 4
    assert info["metrics"]["miou"] == pytest.approx(last["miou_student"], abs=1e-4)
    assert list(info["metrics"]["iou"]) == CLASSES
    onnx = info["onnx"]
    assert onnx["opset"] == 18 and onnx["dynamic"] == {"batch": True, "height": True, "width": True}
    assert len(onnx["check"]) == 2 and all(c["argmax_agreement"] >= 0.999 for c in onnx["check"])

    # Weights only: exactly the student's tensors, equal to the checkpoint's.
    weights = load_file(demo_export / "model.safetensors")
    student = build_model_from_checkpoint(demo_checkpoint, device="cpu").models("student")
    reference = student["student"].state_dict()
    assert set(weights) == set(reference)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)

    card = (demo_export / "README.md").read_text()
    assert "unet-effl0" in card and f"{info['metrics']['miou']:.2f}" in card
    assert all(c in card for c in CLASSES) and "--runtime onnx" in card
    printed = (demo_export.parent / "printed.txt").read_text()  # what the CLI printed
    assert "model.onnx" in printed and "argmax agreement 100" in printed


def test_export_a_teacher_and_refuse_bad_options(demo_checkpoint, demo_export, tmp_path, capsys):
    out = tmp_path / "teacher"
    shutil.copytree(demo_export, out)  # exporting again over an export replaces all of it
    main(["export", str(demo_checkpoint), "--out", str(out), "--model", "teacher_a"])
    info = read_export(out)
    assert info["exported_model"] == "teacher_a" and list(info["files"]) == ["safetensors"]
    assert not (out / "model.onnx").exists()  # the earlier export's file would not match
    assert "teacher_a" in (out / "README.md").read_text()
    teacher = build_model_from_checkpoint(demo_checkpoint, device="cpu").models("teacher_a")
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in teacher["teacher_a"].state_dict().items())
    for bad, message in [
        (["--format", "pickle"], "--format pickle: choose from safetensors, onnx"),
        (["--model", "all"], "an export holds one model"),
        (["--model", "teacher_c"], "no model named teacher_c"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["export", str(demo_checkpoint), "--out", str(tmp_path / "x"), *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("deeplabv3plus-r50", [(2, 64, 64), (1, 45, 70)]),
        ("segformer-b0", [(2, 64, 64), (1, 45, 70)]),
        ("dpt-dinov2-s", [(2, 56, 56), (1, 45, 70)]),
    ],
)
def test_onnx_runtime_matches_pytorch(name, sizes, tmp_path):
    """One model of each family besides the demo's U-Net: ONNX Runtime's logits at two input
    sizes (one not a multiple of the divisor, so the graph's padding runs) against PyTorch."""
    cfg = load_config("demo", [f"model.name={name}", "model.pretrained=null"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 3, verbose=False).eval()
    export_model(net, cfg, ["a", "b", "c"], [], tmp_path, "onnx")
    onnx_model = load_exported(tmp_path, runtime="onnx")
    assert isinstance(onnx_model.models["student"], OnnxModel)
    gen = torch.Generator().manual_seed(0)
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = net(x)
        got = onnx_model.logits(x)
        assert got.shape == ref.shape == (b, 3, h, w)
        diff = (got - ref).abs().max().item()
        agreement = (got.argmax(1) == ref.argmax(1)).float().mean().item()
        scale = ref.abs().max().item()
        print(
            f"{name} {b}x3x{h}x{w}: max abs diff {diff:.2e} (logits to {scale:.2g}), "
            f"argmax agreement {agreement:.5f}"
        )
        assert agreement >= 0.999
        assert diff <= 1e-3 * max(1.0, scale)


def test_predict_from_export_equals_checkpoint(demo_checkpoint, demo_export, images, tmp_path):
    sliding = ["eval.mode=sliding", "eval.crop_size=32", "eval.stride=16"]
    for overrides in ([], sliding):
        ckpt, exp, ort = (tmp_path / f"{k}{len(overrides)}" for k in ("ckpt", "exp", "ort"))
        predict(demo_checkpoint, [str(images)], ckpt, overrides=overrides, progress=False)
        predict(demo_export, [str(images)], exp, overrides=overrides, progress=False)
        result = predict(
            demo_export, [str(images)], ort, overrides=overrides, progress=False, runtime="onnx"
        )
        assert len(result.written) == 3 and not result.failed
        ref, same, onnx = _ids(ckpt), _ids(exp), _ids(ort)
        for n in ref:
            assert np.array_equal(ref[n], same[n])  # PyTorch from the export: identical
            agreement = np.mean(ref[n] == onnx[n])
            print(f"predict {n} {overrides}: ONNX Runtime argmax agreement {agreement:.5f}")
            assert agreement >= 0.999
    # The Python API in one call gives what predict wrote.
    model = load_exported(demo_export, runtime="onnx")
    image = np.asarray(Image.open(images / "a.png").convert("RGB"))
    assert np.mean(model.predict(image) == _ids(tmp_path / "ckpt0")["a"]) >= 0.999
    assert model.classes == CLASSES and model.runtime == "onnx"


def test_bad_export_directories(demo_export, images, tmp_path, capsys):
    def error(source, *extra) -> str:
        """``dualteacher predict SOURCE images/``: status 2 and one line, no traceback."""
        with pytest.raises(SystemExit) as e:
            main(["predict", str(source), str(images), "--out", str(tmp_path / "pred"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    def copy_export() -> Path:
        d = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(demo_export, d)
        return d

    def record(d: Path, fmt: str) -> None:  # model.json made to match the file on disk
        info = json.loads((d / "model.json").read_text())
        f = d / info["files"][fmt]["name"]
        info["files"][fmt].update(bytes=f.stat().st_size, sha256=sha256(f.read_bytes()).hexdigest())
        (d / "model.json").write_text(json.dumps(info))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    assert "is not a dualteacher export (no model.json)" in error(foreign)
    (foreign / "model.json").write_text(json.dumps({"name": "some other tool"}))
    assert "no 'dualteacher-export' marker" in error(foreign)
    (foreign / "model.json").write_text("{not json")
    assert "model.json is damaged" in error(foreign)

    for name, runtime in [("model.safetensors", "torch"), ("model.onnx", "onnx")]:
        broken = copy_export()
        data = (broken / name).read_bytes()
        (broken / name).write_bytes(data[: len(data) // 2])  # truncated
        assert f"{name} is damaged or was replaced" in error(broken, "--runtime", runtime)
        record(broken, "onnx" if runtime == "onnx" else "safetensors")  # past the hash check
        err = error(broken, "--runtime", runtime)
        assert ("cannot load" in err) and ("export the checkpoint again" in err)

    # Another model's weights, recorded in model.json: refused by name, not loaded loosely.
    broken = copy_export()
    other = build_model(load_config(None, ["model.name=unet-r18"]).model, 5, verbose=False)
    save_model(other, str(broken / "model.safetensors"))
    record(broken, "safetensors")
    err = error(broken)
    assert "cannot load" in err and "into unet-effl0" in err

    no_onnx = copy_export()
    (no_onnx / "model.onnx").unlink()
    info = json.loads((no_onnx / "model.json").read_text())
    del info["files"]["onnx"]
    (no_onnx / "model.json").write_text(json.dumps(info))
    assert "has no model.onnx" in error(no_onnx, "--runtime", "onnx")
    assert "holds the model 'student' only" in error(copy_export(), "--models", "teacher_a")


def test_export_refuses_an_onnx_graph_that_disagrees(tmp_path, monkeypatch):
    """A graph recorded without the padding (as if the model did not know it is exported)
    is wrong at sizes that are no multiples of the divisor: the export-time check refuses it
    and leaves no model.onnx and no model.json behind."""
    from dualteacher.errors import CheckpointError

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    cfg = load_config("demo", ["model.name=unet-r18", "model.pretrained=null"])
    torch.manual_seed(0)
    net = build_model(cfg.model, 3, verbose=False).eval()
    with pytest.raises(CheckpointError, match="predicts differently from PyTorch"):
        export_model(net, cfg, ["a", "b", "c"], [], tmp_path, "onnx")
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.json").exists()
