"""Issue 18, the smaller items: bad validation files found early or with the right hint, the
same exit status for the same fault on every verb, readable listings and help, no repeated
"pretrained: loaded", and an error on a line of its own after a progress bar."""

from __future__ import annotations

import re

import numpy as np

from dualteacher import checkpoint as ckpt
from dualteacher.cli import EPILOG

from . import trees
from .conftest import TINY
from .test_reliability import QUIET, _folder_with_bad_sample, cli, train_rows

RUN = [
    "method.name=supervised",
    "model.name=unet-r18",
    "model.pretrained=null",
    "data.name=folder",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.steps=2",
    "train.eval_every=100",
    "train.ckpt_every=1",
    "train.log_every=1",
    *QUIET,
]


def test_a_validation_mask_of_the_wrong_size_stops_before_the_first_step(tmp_path, capsys):
    root = trees.make_folder(tmp_path)
    trees.save_mask(root / "val" / "masks" / "v1.png", np.zeros((20, 20), np.uint8))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={root}", "--out", out)
    assert code == 2 and "v1.png: the mask is 20x20 but its image" in err
    assert not (out / "metrics.jsonl").exists()  # before: found at the first validation


def test_validation_label_values_stop_before_the_first_step_check_lists_each(tmp_path, capsys):
    root = trees.make_folder(tmp_path)  # 3 classes, ignore 255
    v0, v1 = root / "val" / "masks" / "v0.png", root / "val" / "masks" / "v1.png"
    trees.save_mask(v0, trees.halves(0, 7))
    bad = trees.halves(1, 255)
    bad[0, 0] = 9  # one pixel: the whole mask is read, not a sample of it
    trees.save_mask(v1, bad)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={root}", "--out", out)
    assert code == 2 and "Traceback" not in err
    # both files, each with its values (255 is the ignore index, not a bad value) and the fix
    assert f"{v0}: label values 7 are not classes" in err
    assert f"{v1}: label values 9 are not classes" in err and "re-export it" in err
    assert not (out / "metrics.jsonl").exists()  # before: found at the first validation
    code, report = cli(capsys, "check", "demo", "data.name=folder", f"data.root={root}")[:2]
    assert code == 2
    assert f"[val] {v0}: label values 7 are not classes" in report
    assert f"[val] {v1}: label values 9 are not classes" in report


def test_a_corrupt_validation_image_gets_the_validation_hint_and_status_2_everywhere(
    tmp_path, capsys
):
    root = trees.make_folder(tmp_path)
    bad = root / "val" / "images" / "v0.png"
    bad.write_bytes(bad.read_bytes()[:300])  # the header is fine, the pixels are cut off
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={root}", "--out", out)
    assert code == 2 and "Traceback" not in err
    assert f"bad validation file, the run is stopped at its validation: {bad}" in err
    assert "never skipped (data.skip_bad applies to training files only)" in err
    assert "set data.skip_bad=true" not in err  # before: a hint that does not apply
    assert ckpt.load_checkpoint(out / "latest.pt")["step"] == 2  # the training is kept
    # the same fault, the same status on every verb (check and predict said 1 before)
    assert cli(capsys, "check", "demo", "data.name=folder", f"data.root={root}")[0] == 2
    assert cli(capsys, "eval", out / "latest.pt")[0] == 2
    code, _, err = cli(capsys, "predict", out / "latest.pt", bad, "--out", tmp_path / "p")
    assert code == 2 and f"{bad}: cannot read the image" in err


def test_an_error_starts_a_line_after_the_progress_bar(tmp_path, capsys):
    overrides, _ = _folder_with_bad_sample(tmp_path, "corrupt image")
    args = ["train", "demo", *overrides, "train.progress=true", "--out", tmp_path / "run"]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "%|" in err  # a bar was drawn (stderr is no terminal here)
    (line,) = [ln for ln in err.split("\n") if "bad data file" in ln]
    assert line.startswith("error: bad data file, the run is stopped: ")  # before: glued on


def test_configs_keeps_names_apart_from_descriptions(capsys):
    code, out, _ = cli(capsys, "configs")
    assert code == 0
    listed = [ln for ln in out.splitlines() if ln and not ln.startswith("(")]
    assert len(listed) >= 5
    for ln in listed:
        assert re.match(r"^[\w.-]+ {2,}\S", ln), ln  # e.g. voc_blended_r101_513 ran into it


def test_help_examples_use_the_paths_demo_writes(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, err = cli(capsys, "demo", "--out", out, "--jobs", "1", *TINY, "train.steps=1")
    assert code == 0, err
    paths = set(re.findall(r"runs/demo\S*\.pt", EPILOG))
    # the demo's Dual Teacher row starts from supervised (before: runs/demo/dual_teacher_seed0)
    assert paths == {"runs/demo/dual_teacher_from_supervised_2x_seed0/best.pt"}
    for p in paths:
        assert (out / p.removeprefix("runs/demo/")).is_file()


def test_pretrained_weights_are_loaded_once_per_run(tmp_path, capsys, monkeypatch):
    import dualteacher.models as models

    loads = []
    real = models.load_encoder_weights

    def counting(*args, **kwargs):
        loads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_encoder_weights", counting)
    args = ["train", "demo", *TINY, "model.name=unet-effl0", "model.pretrained=bundled"]
    args += ["method.name=supervised", "train.steps=2", "train.eval_every=100", "--out", tmp_path]
    code, stdout, err = cli(capsys, *args)
    assert code == 0 and len(loads) == 1 and "pretrained: loaded" in stdout, err
    code, stdout, _ = cli(capsys, "eval", tmp_path / "latest.pt")
    assert code == 0 and len(loads) == 1  # before: loaded (and printed), then overwritten
    code, stdout, _ = cli(capsys, *args, "train.steps=3")
    assert code == 0 and "resuming" in stdout and len(loads) == 1
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3]
