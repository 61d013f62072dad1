"""Issue 18, blow-ups and recovery: a checkpoint is written from good states only, the stop
message names a checkpoint that is good, resuming as advised recovers; a damaged latest.pt is
replaced after a fallback resume; TensorBoard holds each step once after a resume."""

from __future__ import annotations

import json

from dualteacher import checkpoint as ckpt
from dualteacher.config import load_config
from dualteacher.engine.trainer import train

from .conftest import TINY
from .test_reliability import cli, train_rows

# class weights off: the losses quoted below are those of the plain cross-entropy
RUN = [*TINY, "method.name=supervised", "method.class_weights=none", "train.eval_every=100"]


def _largest_weight(path) -> float:
    state = ckpt.load_checkpoint(path)["state"]
    return max(float(v.abs().max()) for v in state.values() if v.is_floating_point())


def test_an_exploding_loss_is_never_checkpointed(tmp_path, capsys):
    # optim.lr=1e6: step 1's loss is 1.6, step 2's 3.6e11, finite (before: checkpointed, then
    # called "the last good checkpoint"; resuming from it gave NaN again)
    args = [*RUN, "optim.lr=1e6", "train.steps=20", "train.ckpt_every=2", "train.eval_every=2"]
    code, _, err = cli(capsys, "train", "demo", *args, "--out", tmp_path)
    assert code == 1 and "Traceback" not in err  # a failure of the run, not of its input
    assert "the loss exploded to 3.57e+11 (it was 1.57) by step 2" in err
    assert "No checkpoint was written before" in err and "optim.lr" in err
    assert not list(tmp_path.glob("*.pt"))  # no latest.pt, step file or best.pt


def test_the_stop_names_a_good_checkpoint_and_resuming_as_advised_recovers(tmp_path, capsys):
    base = ["train", "demo", *RUN, "train.ckpt_every=1", "--out", tmp_path]
    code, _, err = cli(capsys, *base)  # 4 good steps
    assert code == 0, err
    good = _largest_weight(tmp_path / "latest.pt")
    changed = ["train.resume_with_changes=true", "train.steps=8"]
    code, _, err = cli(capsys, *base, *changed, "optim.lr=1e6")
    # step 5's loss is computed on the good weights of step 4: the weights give it away
    assert code == 1 and "the largest weight exploded" in err and "by step 5" in err
    assert f"The last good checkpoint is {tmp_path / 'latest.pt'} (step 4)" in err
    state = ckpt.load_checkpoint(tmp_path / "latest.pt")
    assert state["step"] == 4 and _largest_weight(tmp_path / "latest.pt") == good
    # as the message advises: a lower learning rate, resumed with changes (before: the
    # checkpoint's learning rate came back with its optimizer state, whatever optim.lr said)
    code, _, err = cli(capsys, *base, *changed, "optim.lr=0.001")
    assert code == 0, err
    rows = [r for r in train_rows(tmp_path) if r["step"] > 4]
    assert [r["step"] for r in rows] == [5, 6, 7, 8]
    assert all(0 <= r["lr"] <= 0.001 and abs(r["loss"]) < 10 for r in rows)  # poly: 0 at 8
    assert rows[0]["lr"] > 0


def test_a_damaged_latest_is_replaced_after_the_fallback(tmp_path, capsys):
    args = ["train", "demo", *RUN, "train.ckpt_every=2", "--out", tmp_path]
    assert cli(capsys, *args)[0] == 0
    latest = tmp_path / "latest.pt"
    latest.unlink()  # a hard link of step_0000004.pt: replace it, do not write through it
    latest.write_bytes(b"half a checkpoint")
    code, _, err = cli(capsys, *args)  # finished: resumes from step_0000004.pt, validates
    assert code == 0 and "skipped unreadable checkpoint" in err
    assert f"{latest} replaced by a link to step_0000004.pt" in err
    assert ckpt.load_checkpoint(latest)["step"] == 4  # before: still damaged
    assert latest.samefile(tmp_path / "step_0000004.pt")


def test_tensorboard_has_each_step_once_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = [*RUN, "train.tensorboard=true", "train.ckpt_every=2", f"train.out_dir={tmp_path}"]
    train(load_config("demo", args))
    # as if killed after step 4 was logged but before its checkpoint: steps 3, 4 train again
    for name in ("latest.pt", "step_0000004.pt"):
        (tmp_path / name).unlink()
    ckpt._link_or_copy(tmp_path / "step_0000002.pt", tmp_path / "latest.pt")
    train(load_config("demo", args))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4]  # before: 1, 2, 3, 4, 3, 4
    rows = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(rows)) == [1, 2, 3, 4] and rows.count(3) == 1
