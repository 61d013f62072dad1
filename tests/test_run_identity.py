"""Issue 18, run identity: the default run directory names the dataset, a run resumes only on
the data it started on (wherever that data lies now), and a checkpoint's data is found from
any folder."""

from __future__ import annotations

import shutil

import numpy as np

from dualteacher import checkpoint as ckpt
from dualteacher.config import load_config

from . import trees
from .test_reliability import QUIET, cli

RUN = [
    "method.name=supervised",
    "model.name=unet-r18",
    "model.pretrained=null",
    "data.name=folder",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.steps=2",
    "train.eval_every=100",
    "train.ckpt_every=100",
    *QUIET,
]


def test_default_run_directory_names_the_dataset(tmp_path, monkeypatch, capsys):
    cats = trees.make_folder(tmp_path / "a").rename(tmp_path / "a" / "cats")
    dogs = trees.make_folder(tmp_path / "b").rename(tmp_path / "b" / "dogs")
    monkeypatch.chdir(tmp_path)
    for root in (cats, dogs):
        code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={root}")
        assert code == 0, err
    # before: both were runs/folder_supervised, the second resuming the first's run
    for name in ("cats", "dogs"):
        assert ckpt.load_checkpoint(tmp_path / "runs" / f"{name}_supervised" / "latest.pt")
    assert not (tmp_path / "runs" / "folder_supervised").exists()


def test_resume_on_other_data_is_refused_with_the_changes(tmp_path, monkeypatch, capsys):
    first = trees.make_folder(tmp_path / "a")  # .../a/mydata
    second = trees.make_folder(
        tmp_path / "b", n_train=6, n_unlabeled=1
    )  # .../b/mydata: the same folder name
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={first}")
    assert code == 0, err
    run = tmp_path / "runs" / "mydata_supervised"
    saved = (run / "config.yaml").read_text()
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={second}", "train.steps=4")
    assert code == 2 and "Traceback" not in err
    assert "data labeled set: 4 -> 6 images" in err and "data unlabeled set: 4 -> 2" in err
    assert "resume_with_changes" in err
    assert (run / "config.yaml").read_text() == saved  # before: overwritten by the second run
    assert ckpt.load_checkpoint(run / "latest.pt")["step"] == 2


def test_moved_data_resumes_and_changed_files_do_not(tmp_path, monkeypatch, capsys):
    old = trees.make_folder(tmp_path / "a")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *RUN, f"data.root={old}", "--out", out)
    assert code == 0, err
    new = tmp_path / "elsewhere" / "mydata"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    code, stdout, err = cli(capsys, "train", "demo", *RUN, f"data.root={new}", "train.steps=3",
                            "--out", out)  # fmt: skip
    assert code == 0, err
    assert "resuming" in stdout and ckpt.load_checkpoint(out / "latest.pt")["step"] == 3
    # the same names, but an image that is another file now
    trees.save_rgb(new / "train" / "images" / "img1.jpg", trees.image(99))
    args = ["train", "demo", *RUN, f"data.root={new}", "train.steps=4", "--out", out]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "data labeled set: same image names, files of other sizes" in err
    code, stdout, err = cli(capsys, *args, "train.resume_with_changes=true")
    assert code == 0 and "resuming" in stdout and "files of other sizes" in stdout, err


def test_relative_data_root_evaluates_from_another_folder(tmp_path, monkeypatch, capsys):
    trees.make_folder(tmp_path / "proj" / "data")
    monkeypatch.chdir(tmp_path / "proj")
    args = ["train", "demo", *RUN, "data.root=data/mydata", "--out", "run"]
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    stored = ckpt.load_checkpoint(tmp_path / "proj" / "run" / "latest.pt")["config"]["data"]
    assert stored["root"] == str(tmp_path / "proj" / "data" / "mydata")  # absolute
    assert load_config(tmp_path / "proj" / "run" / "config.yaml").data.root == stored["root"]
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(capsys, "eval", "proj/run/latest.pt")
    assert code == 0 and "mIoU" in stdout, err
    # a checkpoint of an older version, with the relative path as typed: a hint, not a riddle
    state = ckpt.load_checkpoint(tmp_path / "proj" / "run" / "latest.pt")
    state["config"]["data"]["root"] = "data/mydata"
    ckpt.save_checkpoint(state, tmp_path / "old.pt")
    code, _, err = cli(capsys, "eval", "old.pt")
    assert code == 2 and "data.root=data/mydata is relative: resolved from this folder" in err
    assert "dualteacher eval old.pt data.root=PATH" in err
    code, stdout, err = cli(capsys, "eval", "old.pt", "data.root=proj/data/mydata")
    assert code == 0, err
    assert np.isfinite(float(stdout.split("mIoU")[1].split()[0]))
