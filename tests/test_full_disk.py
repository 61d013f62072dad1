"""Issue 18, full disks: every command that writes reports a failed write in one line naming
the file and the fix, and leaves no partial file behind."""

from __future__ import annotations

import errno
import io
import os

import numpy as np
import pytest
from PIL import Image

from dualteacher import outputs
from dualteacher.config import load_config
from dualteacher.engine.trainer import train

from . import trees
from .conftest import TINY
from .test_reliability import cli

QUICK = [*TINY, "method.name=supervised", "train.steps=2", "train.eval_every=100"]


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes: then every write fails with
    ENOSPC, as the kernel's write(2) does (wrapped like ``os.fdopen`` wraps a real file)."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = min(len(b), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return os.write(self.fd, bytes(b[:n]))

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(word)``: writes of files whose name contains ``word`` hit a full disk."""

    def install(word: str, room: int = 100):
        real = outputs._fdopen

        def fdopen(fd, mode="r", *args, **kwargs):
            if word in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
                return io.BufferedWriter(_FullDisk(fd, room))
            return real(fd, mode, *args, **kwargs)

        monkeypatch.setattr(outputs, "_fdopen", fdopen)

    return install


def _one_error_line(code: int, err: str, path) -> None:
    """One ``error:`` line, the last of stderr (progress bars may come before it)."""
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.split("\n") if ln.strip()]
    assert [ln for ln in lines if "error" in ln] == lines[-1:], err
    assert lines[-1].startswith(f"error: could not write {path}: No space left on device (ENOSPC)")
    assert "free disk space" in lines[-1].lower()


def _no_partial_files(folder) -> None:
    left = [
        p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".tmp" or not p.stat().st_size)
    ]
    assert left == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_disk_run")
    train(load_config("demo", [*QUICK, f"train.out_dir={out}"]))
    return out / "latest.pt"


def test_checkpoint_write_on_a_full_disk(tmp_path, capsys, full_disk):
    full_disk(".pt")  # torch.save reports it as a RuntimeError: before, a 40-line traceback
    code, _, err = cli(capsys, "train", "demo", *QUICK, "--out", tmp_path)
    _one_error_line(code, err, tmp_path / "best.pt")  # the first checkpoint of the run
    assert "The previous best.pt (if any) is untouched" in err and "to resume" in err
    _no_partial_files(tmp_path)
    assert not list(tmp_path.glob("*.pt"))


def test_eval_report_on_a_full_disk(checkpoint, tmp_path, capsys, full_disk):
    full_disk("iou.md")  # before: an empty iou.md, and a traceback
    code, _, err = cli(capsys, "eval", checkpoint, "--report", tmp_path / "report")
    _one_error_line(code, err, tmp_path / "report" / "iou.md")
    _no_partial_files(tmp_path)
    assert not (tmp_path / "report" / "iou.md").exists()


def test_predict_on_a_full_disk(checkpoint, tmp_path, capsys, full_disk):
    Image.fromarray(trees.image(0)).save(tmp_path / "photo.jpg")
    full_disk("photo_overlay.png")  # before: a 0-byte PNG
    code, _, err = cli(
        capsys, "predict", checkpoint, tmp_path / "photo.jpg", "--out", tmp_path / "p"
    )
    _one_error_line(code, err, tmp_path / "p" / "photo_overlay.png")
    _no_partial_files(tmp_path)
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == [
        "legend.png",
        "photo.png",
        "photo_color.png",
    ]


def test_compare_summary_on_a_full_disk(tmp_path, capsys, full_disk):
    full_disk("summary.md")
    args = ["compare", "demo", *QUICK, "--methods", "supervised", "--out", tmp_path]
    code, _, err = cli(capsys, *args)
    _one_error_line(code, err, tmp_path / "summary.md")
    _no_partial_files(tmp_path)


def test_splits_on_a_full_disk(tmp_path, capsys, full_disk):
    root = trees.make_folder(tmp_path)
    full_disk("labeled.txt", room=10)
    args = [
        "splits",
        "--root",
        root,
        "--dataset",
        "folder",
        "--labeled",
        "2",
        "--out",
        tmp_path / "s",
    ]
    code, _, err = cli(capsys, *args)
    _one_error_line(code, err, tmp_path / "s" / "labeled.txt")
    _no_partial_files(tmp_path / "s")
    assert np.all([not p.exists() for p in (tmp_path / "s").glob("*.txt")])


def test_pseudolabel_on_a_full_disk(checkpoint, tmp_path, capsys, full_disk):
    (tmp_path / "in").mkdir()
    Image.fromarray(trees.image(0)).save(tmp_path / "in" / "photo.jpg")
    full_disk("photo.png")  # the mask and the confidence map
    code, _, err = cli(
        capsys, "pseudolabel", checkpoint, "--images", tmp_path / "in", "--out", tmp_path / "pl"
    )
    _one_error_line(code, err, tmp_path / "pl" / "masks" / "photo.png")
    _no_partial_files(tmp_path)


def test_suggest_on_a_full_disk(checkpoint, tmp_path, capsys, full_disk):
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(trees.image(i)).save(tmp_path / "in" / f"u{i}.jpg")
    full_disk("ranking.csv")
    args = ["--images", tmp_path / "in", "--top", "2", "--out", tmp_path / "s"]
    code, _, err = cli(capsys, "suggest", checkpoint, *args)
    _one_error_line(code, err, tmp_path / "s" / "ranking.csv")
    _no_partial_files(tmp_path)
