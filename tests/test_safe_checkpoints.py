"""Issue 28, item 1: opening a checkpoint never runs code.

A crafted ``.pt`` whose unpickling would create a file is given to every verb that opens a
checkpoint: no file appears, one line explains, exit status 2. Every checkpoint the project
writes loads with ``weights_only=True`` (the rest of the suite loads them all through the same
loader); format-1 files (NumPy random state as an array) still load safely; other old files
are converted only on an explicit ``--trust``."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dualteacher import checkpoint as ckpt

from . import trees
from .conftest import TINY
from .test_reliability import cli


class _CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker):
    # A real checkpoint's marker, so only the unpickling itself can stop it.
    torch.save({"format": ckpt.FORMAT, "version": 1, "payload": _CreatesFile(marker)}, path)
    return path


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    path = _crafted(run / "best.pt", marker)
    _crafted(run / "latest.pt", marker)
    images = trees.make_folder(tmp_path) / "unlabeled"
    return path, marker, images


VERBS = {
    "eval": lambda p, out, images: ["eval", p],
    "eval --report": lambda p, out, images: ["eval", p, "--report", out],
    "predict": lambda p, out, images: ["predict", p, images, "--out", out],
    "export": lambda p, out, images: ["export", p, "--out", out],
    "suggest": lambda p, out, images: ["suggest", p, "--images", images, "--out", out],
    "pseudolabel": lambda p, out, images: ["pseudolabel", p, "--images", images, "--out", out],
    "upgrade-checkpoint": lambda p, out, images: ["upgrade-checkpoint", p],
    # a run directory whose latest.pt is crafted: train resumes from it
    "train (resume)": lambda p, out, images: ["train", "demo", *TINY, "--out", p.parent],
}


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_crafted_checkpoint_runs_no_code_on_any_verb(verb, crafted, tmp_path, capsys):
    path, marker, images = crafted
    code, _, err = cli(capsys, *VERBS[verb](path, tmp_path / "out", images))
    assert not marker.exists(), f"{verb} ran the checkpoint's code"
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning")]
    assert len(lines) == 1, err
    assert "(io.open)" in err and "upgrade-checkpoint" in err and "--trust" in err


def test_the_safe_loader_is_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ckpt.CheckpointError, match="was not loaded"):
        ckpt.load_checkpoint(_crafted(tmp_path / "x.pt", marker))
    assert not marker.exists()


def test_checkpoints_hold_plain_data_and_numpy_state_round_trips(tmp_path):
    np.random.seed(7)
    np.random.rand(5)  # a state in the middle of the stream, with a cached gaussian
    np.random.standard_normal()
    state = {"rng": ckpt.rng_state(), "step": 1}
    ckpt.save_checkpoint(state, tmp_path / "a.pt")
    expected = np.random.rand(4)
    np.random.seed(0)
    loaded = ckpt.load_checkpoint(tmp_path / "a.pt")
    assert isinstance(loaded["rng"]["numpy"], dict)
    assert isinstance(loaded["rng"]["numpy"]["keys"], torch.Tensor)
    ckpt.set_rng_state(loaded["rng"])
    assert np.array_equal(np.random.rand(4), expected)


def test_saving_a_non_plain_value_is_a_writers_bug(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\]\['miou'\]"):
        ckpt.save_checkpoint({"history": [{"miou": np.float64(1.0)}]}, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()


def _format_1(path, extra=None):
    """A checkpoint as version 1 wrote it: NumPy's own state tuple (with an ndarray)."""
    np.random.seed(3)
    state = {
        "format": ckpt.FORMAT,
        "version": 1,
        "step": 5,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        **(extra or {}),
    }
    torch.save(state, path)
    return np.random.rand(3)


def test_a_format_1_checkpoint_still_loads_safely(tmp_path):
    expected = _format_1(tmp_path / "old.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "old.pt")
    ckpt.set_rng_state(loaded["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_an_old_file_with_other_objects_converts_only_with_trust(tmp_path, capsys):
    old = tmp_path / "old.pt"
    expected = _format_1(old, {"history": [{"miou": np.float64(12.5)}]})
    with pytest.raises(ckpt.CheckpointError, match="upgrade-checkpoint"):
        ckpt.load_checkpoint(old)
    code, _, err = cli(capsys, "upgrade-checkpoint", old)  # without --trust: nothing written
    assert code == 2 and "only with --trust" in err
    new = tmp_path / "new.pt"
    code, out, _ = cli(capsys, "upgrade-checkpoint", old, "--trust", "--out", new)
    assert code == 0 and "loads with weights_only=True" in out
    loaded = ckpt.load_checkpoint(new)
    assert loaded["version"] == ckpt.VERSION and loaded["history"] == [{"miou": 12.5}]
    ckpt.set_rng_state(loaded["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_a_run_directory_given_as_checkpoint_names_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    ckpt.save_checkpoint({"step": 1}, tmp_path / "run" / "best.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"is a directory.*did you mean .*best\.pt"):
        ckpt.load_checkpoint(tmp_path / "run")
