"""Issue 27: the exit status follows one convention on every verb (``errors.py``,
docs/reliability.md): 0 done; 2 the input or environment is at fault, in one ``error:`` line;
1 a run failed (a numerical fault; an unexpected error keeps its traceback); 130 / 143
stopped by SIGINT / SIGTERM. A new command must join the matrix (the first test)."""

from __future__ import annotations

import importlib

import pytest
from PIL import Image

from dualteacher.cli import build_parser, main
from dualteacher.errors import TrainingStopped

# One input fault per verb, each found before any work: (argv, what the one line says).
FAULTS = {
    "train": (["train", "no_such_config.yaml"], "no_such_config.yaml"),
    "eval": (["eval", "{tmp}/missing.pt"], "checkpoint not found"),
    "predict": (
        ["predict", "{tmp}/missing.pt", "{tmp}/imgs", "--out", "{tmp}/o"],
        "checkpoint not found",
    ),
    "export": (["export", "{tmp}/missing.pt", "--out", "{tmp}/o"], "checkpoint not found"),
    "compare": (
        ["compare", "no_such_config.yaml", "--methods", "supervised", "--out", "{tmp}/o"],
        "no_such_config.yaml",
    ),
    "suggest": (["suggest", "{tmp}/missing.pt", "--out", "{tmp}/o"], "checkpoint not found"),
    "pseudolabel": (
        ["pseudolabel", "{tmp}/missing.pt", "--images", "{tmp}/imgs", "--out", "{tmp}/o"],
        "checkpoint not found",
    ),
    "demo-data": (["demo-data", "--out", "{tmp}/o", "data.demo.no_such_key=1"], "no_such_key"),
    "configs": (["configs", "extra"], "unrecognized"),  # an argparse usage error: also 2
    "demo": (["demo", "--out", "{tmp}/o", "train.no_such_key=1"], "no_such_key"),
    "check": (["check", "no_such_config.yaml"], "no_such_config.yaml"),
    "splits": (
        [
            "splits",
            "--root",
            "{tmp}/nothing",
            "--dataset",
            "folder",
            "--labeled",
            "1",
            "--out",
            "{tmp}/o",
        ],
        "nothing",
    ),
    "upgrade-checkpoint": (["upgrade-checkpoint", "{tmp}/missing.pt", "--trust"], "not found"),
    "models": (["models", "no-such-model"], "no-such-model"),
    "bench": (["bench", "--config", "no_such_config.yaml"], "no_such_config.yaml"),
}


def _argv(verb: str, tmp_path) -> list[str]:
    (tmp_path / "imgs").mkdir(exist_ok=True)  # a readable input: the checkpoint is the fault
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    return [a.replace("{tmp}", str(tmp_path)) for a in FAULTS[verb][0]]


def _status(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_the_matrix_covers_every_verb():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(FAULTS) == set(sub.choices)


@pytest.mark.parametrize("verb", list(FAULTS))
def test_an_input_fault_exits_2_in_one_line(verb, tmp_path, capsys):
    assert _status(_argv(verb, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and FAULTS[verb][1] in err, err
    if verb != "configs":  # argparse prints its usage line first
        # one message (an unknown key adds the valid keys on the lines after it)
        assert err.startswith("error: ") and err.count("error: ") == 1, err


STOPS = {
    "SIGINT": (KeyboardInterrupt(), 130),
    "SIGTERM": (TrainingStopped("stopped; rerun to resume", exit_code=143, label="stopped"), 143),
    "diverged": (TrainingStopped("non-finite loss; the last good checkpoint is kept"), 1),
}


@pytest.mark.parametrize("stop", list(STOPS))
@pytest.mark.parametrize("verb", list(FAULTS))
def test_stops_and_bugs_map_to_one_status_through_the_dispatcher(
    verb, stop, tmp_path, capsys, monkeypatch
):
    # The verb's run is replaced: this pins what cli.main makes of a signal, a failed run and
    # a bug for every verb, not what a verb's own code might catch on the way.
    error, code = STOPS[stop]

    def run(args):
        raise error

    if verb == "configs":  # its fault is a usage error; a plain call reaches run
        argv = ["configs"]
    else:
        argv = _argv(verb, tmp_path)
    monkeypatch.setattr(importlib.import_module(_module(verb)), "run", run)
    assert _status(argv) == code
    assert "Traceback" not in capsys.readouterr().err
    # an unexpected error is a bug: it keeps its traceback (Python exits with status 1)
    monkeypatch.setattr(importlib.import_module(_module(verb)), "run", _bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


def _bug(args):
    raise RuntimeError("a bug")


def _module(verb: str) -> str:
    return f"dualteacher.commands.{verb.replace('-', '_')}"
