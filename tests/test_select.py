"""``data.select``: a selection split held out of training picks ``best.pt``, and "best" is the
validation mIoU of that checkpoint (never the maximum over validation)."""

import json
import math

import pytest
import torch

import dualteacher.engine.trainer as trainer_module
from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data import build_data
from dualteacher.data.select import source_names as _names
from dualteacher.engine.run import build_training
from dualteacher.engine.trainer import train
from dualteacher.errors import ConfigError, DataError
from dualteacher.metrics import SegMetrics
from dualteacher.plots import read_metrics
from dualteacher.study.check import check_data, format_report
from dualteacher.study.compare import compare

from .conftest import TINY
from .trees import make_folder

NUM_LABELED, NUM_VAL = 8, 6  # TINY's demo sizes; data.select=0.25 holds out 2 labelled images


def _cfg(tmp_path, *extra, name="run"):
    return load_config("demo", [*TINY, *extra, f"train.out_dir={tmp_path / name}"])


# ------------------------------------------------------------------------------ the split
def test_select_is_held_out_of_the_labelled_set_by_a_draw_of_its_own_seed(tmp_path):
    whole = _names(build_data(_cfg(tmp_path).data).labeled)
    bundle = build_data(_cfg(tmp_path, "data.select=0.25").data)
    kept, held = _names(bundle.labeled), _names(bundle.select)
    assert len(held) == 2 and len(kept) == NUM_LABELED - 2
    assert not set(kept) & set(held)  # no selection image is trained on
    assert sorted(kept + held) == sorted(whole)  # nothing lost, names kept from the whole set
    # the images themselves, not only their names, are the whole set's
    whole_src = build_data(_cfg(tmp_path).data).labeled
    for i, name in enumerate(held):
        j = whole.index(name)
        assert (bundle.select.load(i).image == whole_src.load(j).image).all()
    assert bundle.select.load(0).mask is not None  # scored against its mask

    # deterministic; a count works as a fraction does
    again = build_data(_cfg(tmp_path, "data.select=2").data)
    assert _names(again.select) == held and _names(again.labeled) == kept
    # data.select_seed draws it, not train.seed: every training seed selects on the same images
    runs = [
        build_training(_cfg(tmp_path, "data.select=0.25", f"train.seed={s}"), verbose=False)
        for s in (0, 7)
    ]
    assert [_names(r.bundle.select) for r in runs] == [held, held]
    others = [
        _names(build_data(_cfg(tmp_path, "data.select=0.25", f"data.select_seed={s}").data).select)
        for s in (1, 2, 3)
    ]
    assert any(o != held for o in others)


def test_select_off_keeps_the_labelled_set(tmp_path):
    for value in ("null", "0"):
        bundle = build_data(_cfg(tmp_path, f"data.select={value}").data)
        assert bundle.select is None and len(bundle.labeled) == NUM_LABELED


def test_select_split_file_on_a_folder_dataset(tmp_path, capsys):
    root = make_folder(tmp_path)  # train img0..img3 labelled, val v0 v1, unlabeled/u0..u2
    listed = tmp_path / "select.txt"
    listed.write_text("# held out for selection\nimg1\ntrain/images/img3.jpg\n")
    base = ["data.name=folder", f"data.root={root}"]
    cfg = load_config("demo", [*base, f"data.select={listed}"])
    bundle = build_data(cfg.data)
    assert sorted(_names(bundle.select)) == ["img1", "img3"]
    assert sorted(_names(bundle.labeled)) == ["img0", "img2"]
    assert all(e.mask is not None for e in bundle.select.entries)
    plain = build_data(load_config("demo", base).data)
    assert len(bundle.unlabeled) == len(plain.unlabeled)
    assert bundle.select.load(0).mask is not None

    # `check` shows the selection split and its size
    text = format_report(check_data(cfg))
    assert "select: 2 images (data.select)" in text
    assert any(line.split()[:2] == ["select", "2"] for line in text.splitlines())

    # a selection image must not be a validation image (it would be reported on)
    listed.write_text("img1\nval/images/v0.png\n")
    with pytest.raises(DataError) as e:
        build_data(cfg.data)
    assert "data.select" in str(e.value) and "validation" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0.01", ["data.select=0.01", "rounds to none", "larger fraction"]),
        (str(NUM_LABELED), [f"data.select={NUM_LABELED}", "leaves none", "at most 7"]),
        ("missing_select.txt", ["data.select=missing_select.txt", "file not found"]),
        ("-3", ["data.select=-3", "must be a fraction"]),
        ("2.5", ["data.select=2.5", "whole number"]),
    ],
)
def test_bad_select_is_one_clear_line(tmp_path, capsys, value, words):
    with pytest.raises(SystemExit) as e:
        main(["train", "demo", *TINY, f"data.select={value}", "--out", str(tmp_path / "r")])
    assert e.value.code != 0
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in message[0], (w, message[0])


def test_select_file_with_all_labelled_images_is_refused(tmp_path):
    listed = tmp_path / "all.txt"
    listed.write_text("\n".join(f"labeled_{i:05d}" for i in range(NUM_LABELED)) + "\n")
    with pytest.raises(ConfigError, match="leaves none to train on"):
        build_data(_cfg(tmp_path, f"data.select={listed}").data)
    listed.write_text("labeled_00001\nlabeled_00099\n")
    with pytest.raises(DataError, match="labeled_00099"):
        build_data(_cfg(tmp_path, f"data.select={listed}").data)
    listed.write_text("labeled_00001\nlabeled_00004\n")
    bundle = build_data(_cfg(tmp_path, f"data.select={listed}").data)
    assert _names(bundle.select) == ["labeled_00001", "labeled_00004"]
    assert len(bundle.labeled) == NUM_LABELED - 2


# --------------------------------------------------------------------- choosing best.pt
# Validation and selection scores that disagree: validation peaks at the first evaluation,
# the selection split at the second.
VAL_SCRIPT = [50.0, 30.0]
SELECT_SCRIPT = [10.0, 20.0]


@pytest.fixture
def scripted_eval(monkeypatch):
    """The trainer's evaluator returns VAL_SCRIPT / SELECT_SCRIPT, one value per validation,
    told apart by the set's size (validation 6 images, selection 2)."""
    calls = {"val": 0, "select": 0}

    def fake(model, dataset, num_classes, *args, **kwargs):
        which = "val" if len(dataset) == NUM_VAL else "select"
        script = VAL_SCRIPT if which == "val" else SELECT_SCRIPT
        value = script[min(calls[which], len(script) - 1)]
        calls[which] += 1
        return SegMetrics(value, [value] * num_classes, value, 1)

    monkeypatch.setattr(trainer_module, "evaluate", fake)
    return calls


def _supervised(tmp_path, *extra, name="run"):
    return _cfg(tmp_path, "method.name=supervised", "train.ckpt_every=100", *extra, name=name)


def test_best_pt_is_chosen_on_the_selection_split(tmp_path, scripted_eval):
    result = train(_supervised(tmp_path, "data.select=0.25"))
    assert scripted_eval == {"val": 2, "select": 2}
    # best = the validation mIoU at the step of the best selection mIoU, not max(validation)
    assert result.best_chosen_on == "select"
    assert result.best_step == 4 and result.best_miou == 30.0 and result.best_select_miou == 20.0
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["step"] == 4
    assert best["best"] == {"miou": 30.0, "step": 4, "select_miou": 20.0}
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "miou_student" in r]
    assert [(r["miou_student"], r["select_miou_student"]) for r in rows] == [(50, 10), (30, 20)]
    assert [h["select_miou_student"] for h in result.history] == SELECT_SCRIPT


def test_without_select_best_is_the_best_validation(tmp_path, scripted_eval):
    result = train(_supervised(tmp_path))
    assert scripted_eval == {"val": 2, "select": 0}
    assert result.best_chosen_on == "val" and result.best_select_miou is None
    assert result.best_step == 2 and result.best_miou == 50.0
    assert load_checkpoint(tmp_path / "run" / "best.pt")["best"] == {"miou": 50.0, "step": 2}
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "miou_student" in r]
    assert not any(k.startswith("select_") for r in rows for k in r)


@pytest.mark.parametrize("select", [True, False])
def test_compare_reports_the_validation_miou_of_the_selected_checkpoint(
    tmp_path, scripted_eval, capsys, select
):
    cfg = _supervised(tmp_path, *(["data.select=0.25"] if select else []))
    summary = compare(cfg, ["supervised"], tmp_path / "cmp", seeds=[0], steps=4)
    (row,) = summary["results"]
    printed = capsys.readouterr().out
    md = (tmp_path / "cmp" / "summary.md").read_text()
    stored = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert stored["select"] == summary["select"]
    if select:
        assert row["best_miou"] == 30.0 and row["best_miou_per_seed"] == [30.0]
        assert row["best_chosen_on"] == "select" and row["best_select_miou_per_seed"] == [20.0]
        assert row["best_step_per_seed"] == [4]
        assert summary["select"]["chosen_on"] == "select" and summary["select"]["images"] == 2
        for text in (printed, md):
            assert "best (by select)" in text and "selection split" in text
        assert "2 images (data.select=0.25, data.select_seed=0)" in md
    else:  # today's choice, labelled honestly
        assert row["best_miou"] == 50.0 and row["best_chosen_on"] == "val"
        assert summary["select"] == {"chosen_on": "val", "images": 0}
        for text in (printed, md):
            assert "best (by val)" in text and "chosen on the validation set itself" in text


# ------------------------------------------------------------------------------- resume
def test_resume_with_select_is_exact(tmp_path):
    steps = ["data.select=0.25", "train.steps=4", "train.eval_every=1", "train.ckpt_every=100"]
    full = train(_cfg(tmp_path, *steps, name="full"))
    split_cfg = _cfg(tmp_path, *steps, name="split")
    assert train(split_cfg, stop_after=2).steps == 2
    second = train(split_cfg)
    assert second.steps == 4
    a = load_checkpoint(tmp_path / "full" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "latest.pt")
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["best"] == b["best"] and "select_miou" in a["best"]
    keys = ("step", "miou_student", "select_miou_student")
    assert [[h[k] for k in keys] for h in full.history] == [
        [h[k] for k in keys] for h in second.history
    ]
    assert all(math.isfinite(h["select_miou_student"]) for h in full.history)
    # the selection split is part of the run's data: another one does not resume silently
    with pytest.raises(Exception, match="data.select"):
        train(_cfg(tmp_path, *steps[1:], "data.select=0.5", "train.steps=6", name="split"))
