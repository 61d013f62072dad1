"""Issue 25, item 4: continue training when new labels arrive. ``train --init-from CKPT``
starts a run from a trained checkpoint's weights with a fresh schedule, in its own run
directory, records its source, and resumes as any run does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualteacher import checkpoint as ckpt
from dualteacher.checkpoint import file_sha256
from dualteacher.config import load_config, with_absolute_paths
from dualteacher.engine.init_from import teachers_of
from dualteacher.engine.run import build_training
from dualteacher.engine.trainer import train

from . import trees
from .conftest import TINY
from .test_reliability import cli

RARE = ["train.eval_every=100", "train.ckpt_every=100"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Trained checkpoints to start from: Dual Teacher and supervised, 2 steps each."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for method in ("dual_teacher", "supervised"):
        run = root / method
        train(load_config("demo", [*TINY, *RARE, "train.steps=2", f"method.name={method}",
                                   f"train.out_dir={run}"]))  # fmt: skip
        out[method] = run / "latest.pt"
    return out


def _student(state: dict) -> dict:
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _start(source: Path, tmp_path: Path, *overrides: str):
    """The new run as built at step 0 (no step taken)."""
    cfg = load_config("demo", [*TINY, *overrides, f"train.init_from={source}",
                               f"train.out_dir={tmp_path / 'new'}"])  # fmt: skip
    return build_training(with_absolute_paths(cfg), resume_dir=tmp_path / "new", verbose=False)


def test_step_zero_holds_the_source_weights_and_a_fresh_schedule(sources, tmp_path):
    source = ckpt.load_checkpoint(sources["dual_teacher"])
    assert source["step"] == 2 and source["optimizer"]["state"]  # a trained source
    run = _start(sources["dual_teacher"], tmp_path, "train.steps=6")
    # every weight of the student and of both teachers is the source's
    assert _equal(run.method.state_dict(), source["state"])
    # the schedule is the new run's: step 0, no optimizer moments, the lr at its start
    assert run.state.step == 0 and run.state.history == [] and run.resumed_from is None
    assert run.optimizer.state_dict()["state"] == {}
    assert run.scheduler.last_epoch == 0 and run.total_steps == 6
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    record = run.state.init_from
    assert record["path"] == str(sources["dual_teacher"].resolve())
    assert record["sha256"] == file_sha256(sources["dual_teacher"])
    assert record["step"] == 2 and record["method"] == "dual_teacher"
    assert record["teachers"] == "source teachers"


def test_a_supervised_checkpoint_starts_every_teacher_from_its_student(sources, tmp_path):
    source = ckpt.load_checkpoint(sources["supervised"])
    run = _start(sources["supervised"], tmp_path)  # the demo config: dual_teacher
    student = _student(source["state"])
    teachers = teachers_of(run.method)
    assert len(teachers) == 2
    for model in (run.method.student, *teachers):
        assert _equal(model.state_dict(), student)
    assert run.state.init_from["teachers"] == "source student"


def test_the_cli_run_records_its_source_and_resumes_without_reinit(sources, tmp_path, capsys):
    src = sources["dual_teacher"]
    new = tmp_path / "new"
    argv = ["train", "demo", *TINY, *RARE, "train.steps=4", "--init-from", src, "--out", new]
    # an uninterrupted run of 4 steps, as reference
    code, out, err = cli(capsys, *argv[:-1], tmp_path / "straight")
    assert code == 0, err
    assert f"init: student and teachers from {src.resolve()} (dual_teacher, step 2" in out
    straight = ckpt.load_checkpoint(tmp_path / "straight" / "latest.pt")

    # the same run stopped after 2 steps, then resumed by the same command, and by one
    # without --init-from: it continues from its own checkpoint, never from the source again
    train(with_absolute_paths(load_config("demo", [*TINY, *RARE, "train.steps=4",
          f"train.init_from={src}", f"train.out_dir={new}"])), stop_after=2)  # fmt: skip
    capsys.readouterr()
    first = ckpt.load_checkpoint(new / "latest.pt")
    assert first["step"] == 2 and first["init_from"]["sha256"] == file_sha256(src)
    code, out, err = cli(capsys, *argv[: argv.index("--init-from")], "--out", new)
    assert code == 0, err
    assert "resuming" in out and "init:" not in out
    resumed = ckpt.load_checkpoint(new / "latest.pt")
    assert resumed["step"] == 4
    assert _equal(resumed["state"], straight["state"])  # bit for bit the uninterrupted run
    # the source survives the resume, in the checkpoints and in config.yaml
    assert resumed["init_from"] == first["init_from"]
    assert resumed["config"]["train"]["init_from"] == str(src.resolve())
    assert f"init_from: {src.resolve()}" in (new / "config.yaml").read_text()
    # another source for this run directory is another run: refused
    other = sources["supervised"]
    err = _one_line(capsys, *argv[: argv.index("--init-from")], "--init-from", other, "--out", new)
    assert f"was started from {src.resolve()}" in err and "--out NEW_DIR" in err


def _one_line(capsys, *argv) -> str:
    code, _, err = cli(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_mistakes_are_one_line_naming_both_sides(sources, tmp_path, capsys):
    src = sources["dual_teacher"]
    base = ["train", "demo", *TINY, *RARE, "train.steps=1", "--out", tmp_path / "new"]
    err = _one_line(capsys, *base, "--init-from", tmp_path / "nothing.pt")
    assert "train.init_from: checkpoint not found" in err and "nothing.pt" in err
    err = _one_line(capsys, *base, "--init-from", src.parent)  # the run folder
    assert f"is a directory, not a checkpoint file: did you mean {src.parent / 'best.pt'}?" in err
    err = _one_line(capsys, *base, "--init-from", src, "model.name=unet-effl0")
    assert "holds a unet-r18 model" in err and "model.name=unet-effl0" in err
    root = trees.make_folder(tmp_path)  # 3 classes; the demo's checkpoint has 5
    err = _one_line(capsys, *base, "--init-from", src, "data.name=folder", f"data.root={root}")
    assert "has 5 classes (background, brick" in err and "'folder' has 3" in err
    # a run directory that holds another run: continuing there would mix two runs
    err = _one_line(capsys, "train", "demo", *TINY, "--init-from", src, "--out", src.parent)
    assert "did not start from a checkpoint" in err and "--out NEW_DIR" in err
    assert not (tmp_path / "new").exists()  # nothing written, not even the folder
