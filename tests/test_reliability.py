"""Issue 8: clear user errors, bad files met while training, atomic checkpoints and their
retention, signals, non-finite losses, kill -9 then resume, deterministic runs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dualteacher import checkpoint as ckpt
from dualteacher.cli import main
from dualteacher.config import load_config, to_dict
from dualteacher.data import build_data
from dualteacher.data.base import ArraySource, LabeledTrainSet, load_or_replace
from dualteacher.data.loaders import STREAM_LABELED, StreamSampler
from dualteacher.engine.trainer import train
from dualteacher.errors import BadSampleError, CheckpointError, DataError, TrainingStopped
from dualteacher.methods.dual_teacher import DualTeacher
from dualteacher.methods.supervised import Supervised

from . import trees
from .conftest import TINY

SRC = str(Path(__file__).resolve().parents[1] / "src")
# Subprocesses import this checkout's package with one torch thread, like the tests.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
}
QUIET = ["train.threads=1", "train.progress=false", "train.tensorboard=false", "train.curves=false"]
# Validation and 50 MB checkpoints (fsync'd) dominate tiny runs: only at the end by default.
RARE = ["train.eval_every=100", "train.ckpt_every=100"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def train_rows(run_dir: Path) -> list[dict]:
    """Training rows of ``metrics.jsonl``; complete lines only (a run may be writing it)."""
    text = (run_dir / "metrics.jsonl").read_text()
    rows = [json.loads(ln) for ln in text.splitlines(keepends=True) if ln.endswith("\n")]
    return [r for r in rows if "loss" in r]


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ user errors: one message
def _empty_labelled(tmp_path: Path) -> list[str]:
    root = trees.make_folder(tmp_path)
    for p in (root / "train" / "masks").iterdir():
        p.unlink()
    return ["data.name=folder", f"data.root={root}"]


def _a_file(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).write_text("not a directory, not a checkpoint")
    return tmp_path / name


USER_ERRORS = {
    # case: (CLI arguments, text naming the culprit)
    "bad value": (lambda t: ["train", "demo", "train.steps=many"], "train.steps"),
    "missing data root": (
        lambda t: ["train", "demo", "data.name=folder", f"data.root={t / 'nowhere'}"],
        "nowhere: no such directory",
    ),
    "missing split file": (
        lambda t: [
            "train",
            "demo",
            "data.name=folder",
            f"data.root={trees.make_folder(t)}",
            f"data.labeled={t / 'nope.txt'}",
        ],
        "nope.txt",
    ),
    "empty labelled set": (lambda t: ["train", "demo", *_empty_labelled(t)], "labeled set"),
    "unwritable output directory": (
        lambda t: ["train", "demo", "--out", _a_file(t, "occupied") / "run"],
        "is a file, not a folder",  # the one --out check of every verb (issue 27)
    ),
    "not a checkpoint": (lambda t: ["eval", _a_file(t, "junk.pt")], "junk.pt"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_message_without_traceback(case, tmp_path, capsys, monkeypatch):
    make_args, culprit = USER_ERRORS[case]
    monkeypatch.chdir(tmp_path)  # where the default run folder runs/<data>_<method> would go
    code, _, err = cli(capsys, *make_args(tmp_path))
    assert code == 2, err
    assert err.startswith("error: ") and culprit in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # a run that never started leaves no empty folder


def test_debug_shows_the_traceback(capsys):
    code, _, err = cli(capsys, "--debug", "train", "demo", "train.steps=many")
    assert code == 2 and "Traceback" in err and "train.steps" in err


def test_options_between_config_and_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "demo", *TINY, *RARE, "--out", out, "train.steps=1", "--debug", "train.seed=3"]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "done: 1 steps" in stdout
    saved = load_config(out / "config.yaml")
    assert saved.train.steps == 1 and saved.train.seed == 3
    code, _, err = cli(capsys, "train", "demo", "--bogus", "train.steps=1")
    assert code == 2 and "--bogus" in err and "train.steps=1" not in err


def test_broken_pipe_exits_quietly():
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    proc = subprocess.run(
        [sys.executable, "-m", "dualteacher", "configs"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        timeout=120,
    )
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_resume_refuses_another_config_or_model(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config("demo", [*TINY, f"train.out_dir={out}"])
    # a checkpoint as a run of this config writes it; resuming checks it before building
    ckpt.save_checkpoint(
        {"config": to_dict(cfg), "classes": ["a"] * 5, "step": 2}, out / "latest.pt"
    )
    base = ["train", "demo", *TINY, "--out", out]
    code, _, err = cli(capsys, *base, "optim.lr=0.5")
    assert code == 2 and "optim.lr: 0.02 -> 0.5" in err and "resume_with_changes" in err
    assert "Traceback" not in err
    code, _, err = cli(capsys, *base, "method.name=supervised")
    assert code == 2 and "method 'dual_teacher' (config says 'supervised')" in err
    assert "Traceback" not in err


def test_config_changes_that_may_resume():
    a = to_dict(load_config("demo", TINY))
    may = ["train.steps=9", "data.root=/x", "eval.mode=sliding", "train.keep_last=0"]
    b = to_dict(load_config("demo", [*TINY, *may, "optim.lr=0.5", "data.scale_range=[1.0,1.0]"]))
    assert ckpt.config_changes(a, b) == [
        "data.scale_range: (0.75, 1.5) -> (1.0, 1.0)",
        "optim.lr: 0.02 -> 0.5",
    ]
    del a["optim"]["lr"]  # a key only one package version knows is not compared
    assert ckpt.config_changes(a, b) == ["data.scale_range: (0.75, 1.5) -> (1.0, 1.0)"]


def test_weights_of_another_model_are_a_checkpoint_error():
    state = {"state": torch.nn.Linear(3, 3).state_dict(), "config": {"model": {"name": "m"}}}
    with pytest.raises(CheckpointError, match=r"x\.pt does not fit this model.*model.name='m'"):
        ckpt.load_method_state(torch.nn.Linear(2, 2), state, "x.pt")


# ------------------------------------------------------------- bad files met while training
def _folder_with_bad_sample(tmp_path: Path, kind: str, draw_step: int = 2):
    """A folder dataset whose labelled sample drawn first at step ``draw_step`` (batch 1,
    seed 0) is broken in the way ``kind`` says; returns (overrides, the broken file)."""
    root = trees.make_folder(tmp_path, n_train=6)
    data = ["data.name=folder", f"data.root={root}", "data.batch_size=1", "data.crop_size=32"]
    entries = build_data(load_config(None, data).data).labeled.entries
    index = int(StreamSampler(len(entries), 0, STREAM_LABELED).permutation(0)[draw_step])
    entry = entries[index]
    if kind == "corrupt image":
        bad = entry.image
        bad.write_bytes(bad.read_bytes()[:200])
    elif kind == "mask size":
        bad = entry.mask
        trees.save_mask(bad, np.zeros((20, 20), np.uint8))
    else:  # label values outside the classes
        bad = entry.mask
        trees.save_mask(bad, trees.halves(0, 7))
    run = ["method.name=supervised", "train.steps=6", "train.ckpt_every=100", *QUIET]
    run += ["model.name=unet-r18", "model.pretrained=null"]  # batch 1: no 1x1 BN in the encoder
    return [*data, *run, "train.eval_every=100", "train.log_every=1"], bad


REASONS = {
    "corrupt image": "cannot read the image",
    "mask size": "the mask is 20x20 but its image",
    "label values": "label values 7 are not classes",
}


@pytest.mark.parametrize("kind", list(REASONS))
def test_bad_training_file_stops_naming_it_with_a_checkpoint(kind, tmp_path, capsys):
    overrides, bad = _folder_with_bad_sample(tmp_path, kind)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *overrides, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert f"{bad}: {REASONS[kind]}" in err and "data.skip_bad=true" in err
    # steps 1 and 2 were done; the checkpoint of step 2 was written before stopping
    assert ckpt.load_checkpoint(out / "latest.pt")["step"] == 2
    assert "latest.pt (step 2) is kept" in err


def test_loader_failure_keeps_its_traceback_after_a_checkpoint(tmp_path, monkeypatch):
    getitem = LabeledTrainSet.__getitem__
    calls = []

    def fail_at_step_3(self, key):  # batch 2: samples 4 and 5 are read by step 3
        calls.append(key)
        if len(calls) == 5:
            raise RuntimeError("DataLoader worker (pid 1234) exited unexpectedly")
        return getitem(self, key)

    monkeypatch.setattr(LabeledTrainSet, "__getitem__", fail_at_step_3)
    run = [*TINY, *RARE, "method.name=supervised", f"train.out_dir={tmp_path}"]
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        train(load_config("demo", run))
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["step"] == 2


def test_skip_bad_logs_counts_and_replaces_deterministically(tmp_path, capsys):
    overrides, bad = _folder_with_bad_sample(tmp_path, "corrupt image")
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "demo", *overrides, "data.skip_bad=true", "--out", out)
    assert code == 0, err
    assert err.count(f"skipped bad training file {bad}") == 1
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert state["step"] == 6 and state["guard"]["bad_files"] == [str(bad)]
    assert state["guard"]["bad_samples"] >= 1
    counts = [r["bad_samples"] for r in train_rows(out)]
    assert counts[:2] == [0, 0] and counts[2] == 1 and counts[-1] == state["guard"]["bad_samples"]


def test_replacement_sample_is_a_function_of_the_draw():
    class OneBad(ArraySource):
        def load(self, index):
            if index == 3:
                raise BadSampleError(f"f{index}.png", "cannot read the image")
            return super().load(index)

    source = OneBad(np.zeros((8, 4, 4, 3), np.uint8), None)
    a, skipped = load_or_replace(source, 3, seed=11, skip_bad=True)
    b, _ = load_or_replace(source, 3, seed=11, skip_bad=True)
    assert a.name == b.name != "img_00003" and skipped == [("f3.png", "cannot read the image")]
    assert load_or_replace(source, 2, seed=11, skip_bad=True)[1] == []
    with pytest.raises(BadSampleError):
        load_or_replace(source, 3, seed=11, skip_bad=False)
    all_bad = OneBad(np.zeros((1, 4, 4, 3), np.uint8), None)
    all_bad.load = lambda i: source.load(3)
    with pytest.raises(DataError, match="data.skip_bad=true, but 1 samples"):
        load_or_replace(all_bad, 0, seed=0, skip_bad=True)


# ----------------------------------------------------------------------------- checkpoints
def test_crash_between_write_and_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(CheckpointError, match=r"latest\.pt: No space left.*untouched"):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left


def test_keep_last_and_resume_from_the_newest_readable_checkpoint(tmp_path):
    for step in range(1, 5):
        ckpt.save_run_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest.pt", "step_0000003.pt", "step_0000004.pt"]
    assert os.path.samefile(tmp_path / "latest.pt", tmp_path / "step_0000004.pt")
    # killed between the step file and latest.pt: the newer step file wins
    ckpt.save_checkpoint({"step": 3}, tmp_path / "latest.pt")
    path, state = ckpt.find_resume_checkpoint(tmp_path)
    assert state["step"] == 4 and path.name == "step_0000004.pt"
    # an unreadable latest.pt (and a temporary file of a killed write) are passed over
    (tmp_path / "latest.pt").write_bytes(b"garbage")
    (tmp_path / ".latest.pt.abc.tmp").write_bytes(b"half")
    assert ckpt.find_resume_checkpoint(tmp_path)[1]["step"] == 4
    ckpt.remove_stale_temp_files(tmp_path)
    assert not (tmp_path / ".latest.pt.abc.tmp").exists()
    ckpt.save_run_checkpoint({"step": 5}, tmp_path, 5, keep_last=0)
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["step"] == 5
    assert ckpt.find_resume_checkpoint(tmp_path / "empty") is None


# --------------------------------------------------------------------------------- signals
def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, *RARE, "method.name=supervised", "train.steps=500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualteacher", "train", "demo", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").is_file() and train_rows(out)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    state = ckpt.load_checkpoint(out / "latest.pt")
    assert 0 < state["step"] < 500 and state["step"] == train_rows(out)[-1]["step"]
    assert f"interrupted: stopped by SIGTERM after step {state['step']}" in stderr
    assert "Run the same command again" in stderr and "to resume" in stderr


def test_sigint_stops_at_the_end_of_the_step(tmp_path, monkeypatch):
    step_fn = Supervised.training_step

    def interrupt_at_step_2(self, batch_x, batch_u, info):
        if info.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step_fn(self, batch_x, batch_u, info)

    monkeypatch.setattr(Supervised, "training_step", interrupt_at_step_2)
    handler = signal.getsignal(signal.SIGINT)
    cfg = load_config("demo", [*TINY, *RARE, "method.name=supervised", f"train.out_dir={tmp_path}"])
    with pytest.raises(TrainingStopped, match="stopped by SIGINT after step 2") as e:
        train(cfg)
    assert e.value.exit_code == 130
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # restored


# ------------------------------------------------------------------------ non-finite losses
def _nan_at(steps, method=DualTeacher, record=None):
    """A ``training_step`` whose loss is NaN at the given (0-based) steps; ``record`` gets
    the method's state at the start of every step."""
    original = method.training_step

    def step(self, batch_x, batch_u, info):
        if record is not None and info.step not in record:  # its first micro-batch
            record[info.step] = {k: v.clone() for k, v in self.state_dict().items()}
        out = original(self, batch_x, batch_u, info)
        if info.step in steps:
            out["loss"] = out["loss"] * float("nan")
        return out

    return step


@pytest.mark.parametrize("accum", [1, 2])
def test_non_finite_loss_skips_the_step(accum, tmp_path, monkeypatch, capsys):
    before = {}
    monkeypatch.setattr(DualTeacher, "training_step", _nan_at({1}, record=before))
    run = [*TINY, *RARE, f"train.accum_steps={accum}", f"train.out_dir={tmp_path}"]
    cfg = load_config("demo", run)
    result = train(cfg)
    assert result.steps == 4
    # step 2 changed nothing: student, both teachers and their BatchNorm statistics
    assert states_equal(before[1], before[2])
    assert not states_equal(before[0], before[1]) and not states_equal(before[2], before[3])
    rows = train_rows(tmp_path)
    assert [r["bad_steps"] for r in rows] == [0, 1, 1, 1] and np.isnan(rows[1]["loss"])
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["guard"]["bad_steps"] == 1
    assert "step 2: the loss is nan; step skipped" in capsys.readouterr().err


def test_too_many_non_finite_losses_stop_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(DualTeacher, "training_step", _nan_at(set(range(2, 99))))
    args = [*TINY, "train.eval_every=100", "train.steps=8", "train.max_bad_steps=3"]
    args = ["train", "demo", *args, "--out", tmp_path]
    code, _, err = cli(capsys, *args)
    assert code == 1 and "Traceback" not in err  # a failure in the run, not in the input
    assert "not finite for 3 steps in a row (up to step 5" in err
    assert "latest.pt (step 2)" in err and "optim.lr" in err, err
    assert ckpt.load_checkpoint(tmp_path / "latest.pt")["step"] == 2


# ----------------------------------------------------------- kill -9, resume, determinism
KILL_RUN = [*TINY, "train.steps=6", "train.eval_every=100", "train.ckpt_every=3"]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    full = train(load_config("demo", [*KILL_RUN, f"train.out_dir={tmp_path / 'full'}"]))
    assert full.steps == 6
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualteacher", "train", "demo", *KILL_RUN, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120
        # kill once step 4 is logged: a checkpoint exists and the run is not finished
        while not ((out / "metrics.jsonl").is_file() and len(train_rows(out)) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    capsys.readouterr()
    resumed = train(load_config("demo", [*KILL_RUN, f"train.out_dir={out}"]))
    start = int(capsys.readouterr().out.split("from step ")[1].split()[0])
    assert 3 <= start < 6 and resumed.steps == 6
    a = ckpt.load_checkpoint(tmp_path / "full" / "latest.pt")
    b = ckpt.load_checkpoint(out / "latest.pt")
    assert states_equal(a["state"], b["state"])  # student and both teachers
    assert any(k.startswith("teachers.1.") for k in a["state"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [r["step"] for r in train_rows(out)] == list(range(1, 7))  # each step logged once


def test_deterministic_runs_are_bit_identical(tmp_path, monkeypatch):
    seen = []
    original = Supervised.training_step

    def step(self, batch_x, batch_u, info):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, batch_x, batch_u, info)

    monkeypatch.setattr(Supervised, "training_step", step)
    states = []
    for name in ("a", "b"):
        args = [*TINY, *RARE, "method.name=supervised", "train.deterministic=true"]
        train(load_config("demo", [*args, f"train.out_dir={tmp_path / name}"]))
        states.append(ckpt.load_checkpoint(tmp_path / name / "latest.pt")["state"])
    assert states_equal(*states)
    assert seen == [True] * 8 and not torch.are_deterministic_algorithms_enabled()
