"""``dualteacher eval --report``, training curves and the plotting helpers."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data.demo import CLASSES
from dualteacher.engine.evaluate import evaluate_checkpoint
from dualteacher.plots import plot_confusion, read_metrics, teacher_shifts
from dualteacher.study.train import train, write_curves

from .conftest import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report_run")
    train(
        load_config(
            "demo", [*TINY, "data.demo.num_val=4", "train.curves=true", f"train.out_dir={out}"]
        )
    )
    return out


def _png(path) -> Image.Image:
    im = Image.open(path)
    im.load()  # decodes the whole file: a truncated PNG fails here
    return im


def test_eval_report_files_and_contents(run_dir, tmp_path, capsys):
    report = tmp_path / "report"
    main(["eval", str(run_dir / "best.pt"), "--models", "all", "--report", str(report)])
    assert "mIoU" in capsys.readouterr().out
    data = json.loads((report / "iou.json").read_text())
    assert data["classes"] == CLASSES and data["num_images"] == 4
    assert list(data["models"]) == ["student", "teacher_a", "teacher_b"]
    student = data["models"]["student"]
    expected = evaluate_checkpoint(run_dir / "best.pt")["student"]  # what `eval` reports
    assert student["miou"] == pytest.approx(expected.miou)
    confusion = np.array(student["confusion"])
    assert confusion.shape == (5, 5) and confusion.sum() == student["num_pixels"] == 4 * 32 * 32
    md = (report / "iou.md").read_text()
    assert all(f"| {c} |" in md for c in CLASSES) and "**mIoU**" in md and "teacher_b" in md

    for name in ("confusion.png", "confusion_teacher_a.png", "confusion_teacher_b.png"):
        im = _png(report / name)
        assert im.width >= 400 and im.height >= 400
    samples = _png(report / "samples.png")
    # 4 rows (image | truth | 3 predictions) of 210 px cells plus the legend
    assert samples.size[0] == 5 * 210 and samples.size[1] > 4 * 210


def test_training_writes_curves(run_dir):
    im = _png(run_dir / "curves.png")
    assert im.width == 900 and im.height > 600  # loss, mask ratio and mIoU panels
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "miou_student" in r] == [2, 4]


def test_curves_failure_is_only_a_warning(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": "oops"}\n')
    (tmp_path / "curves.png").mkdir()  # the PNG cannot be written
    with caplog.at_level(logging.WARNING):
        write_curves(tmp_path, epoch_steps=2)
    assert "could not write" in caplog.text


def test_teacher_shifts_are_exact_or_explained():
    # epochs of 3 steps, teacher = epoch % 2, logged every step
    rows = [{"step": s + 1, "epoch": s // 3, "active_teacher": (s // 3) % 2} for s in range(8)]
    spans, note = teacher_shifts(rows, epoch_steps=3)
    assert note is None and spans == [(0, 3, 0), (3, 6, 1), (6, 8, 0)]
    sparse = [r for r in rows if r["step"] % 4 == 0]  # log_every=4 misses epoch 0 and 2
    spans, note = teacher_shifts(sparse, epoch_steps=3)
    assert spans == [] and "train.log_every" in note
    assert teacher_shifts([{"step": 1, "loss": 1.0}], epoch_steps=3) == ([], None)


def test_confusion_plot_scales_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    widths = []
    for k in (5, 40):  # 40: no numbers in the cells, a larger figure
        mat = rng.integers(0, 100, (k, k)) + np.eye(k, dtype=int) * 500
        mat[1] = 0  # a class absent from the ground truth: a grey row, no division by zero
        path = tmp_path / f"c{k}.png"
        plot_confusion(mat.tolist(), [f"class_{i}" for i in range(k)], path)
        widths.append(_png(path).width)
    assert widths[0] < widths[1]
