"""``train.init_from``: a run that starts from a trained checkpoint's weights, with a schedule
of its own (step 0, a new optimizer and learning-rate schedule, its own run directory). What
the label-next loop needs when new labels arrive: ``suggest`` -> annotate -> import ->
``dualteacher train CONFIG --init-from runs/old/best.pt --out runs/new``.

- ``read_source``: the checkpoint, read with the safe loader (``weights_only``), its model
  checked against the run's before any data is read, and what the run records about it
  (``record``: path, sha256, step, method, model, where the teachers came from).
- ``load_source``: its weights into the new run's method. The student comes from the
  source's student. The teachers come from the source's teachers when the source was trained
  with the same method (the same set of models); otherwise (a ``supervised`` checkpoint into
  a teacher method, or another teacher method) every teacher starts as a copy of the source's
  student, and the run says so.
- ``adopt_recorded_source``: a resumed run keeps the source it was started from; it never
  reads the source file again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dualteacher.checkpoint import file_sha256, load_checkpoint
from dualteacher.config import Config
from dualteacher.errors import CheckpointError
from dualteacher.methods import Method
from dualteacher.models import SegModel

KEY = "train.init_from"


def read_source(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, record)`` of ``cfg.train.init_from``. A missing file, a folder (a run
    directory: "did you mean DIR/best.pt"), a file that is no dualteacher checkpoint or one of
    another model is a one-line ``CheckpointError`` naming the key."""
    given = cfg.train.init_from
    assert given is not None
    try:
        state = load_checkpoint(given)
    except CheckpointError as e:
        raise CheckpointError(f"{KEY}: {e}") from None
    path = Path(given).expanduser().resolve()
    stored = state.get("config", {})
    model = stored.get("model", {}).get("name")
    if model != cfg.model.name:
        raise CheckpointError(
            f"{KEY}={given} holds a {model} model, this run builds model.name={cfg.model.name}: "
            f"its weights cannot start it. Continue with the source's model (model.name={model}) "
            "or give a checkpoint of this model"
        )
    record = {
        "path": str(path),
        "sha256": file_sha256(path),
        "step": int(state.get("step", 0)),
        "method": stored.get("method", {}).get("name"),
        "model": model,
        "classes": list(state.get("classes", [])),
    }
    return state, record


def check_classes(record: dict[str, Any], classes: list[str], dataset: str) -> None:
    """The source's class count must be the run's (a head of K classes); names that differ
    at the same count are only a warning (the head's class ``i`` is now another name)."""
    source = record["classes"]
    if len(source) != len(classes):
        raise CheckpointError(
            f"{KEY}={record['path']} has {len(source)} classes ({_names(source)}), this run's "
            f"dataset {dataset!r} has {len(classes)} ({_names(classes)}): its head cannot "
            "predict them. Continue on data with the source's classes, or train from scratch"
        )
    renamed = [f"{i}: {a} -> {b}" for i, (a, b) in enumerate(zip(source, classes)) if a != b]
    if renamed:
        print(f"warning: {KEY}: class names differ from the source's ({'; '.join(renamed[:5])})")


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")


def teachers_of(method: Method) -> list[SegModel]:
    """Every model of ``method`` besides its student (its teachers), in registration order."""
    return [m for m in method.modules() if isinstance(m, SegModel) and m is not method.student]


def load_source(
    method: Method, cfg: Config, state: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    """Load the source's weights into ``method`` (see the module docstring); returns the record
    with ``teachers`` set to where the teachers came from (None: the method has none)."""
    source_state = state["state"]
    teachers = teachers_of(method)
    same = record["method"] == cfg.method.name and set(source_state) == set(method.state_dict())
    try:
        if same:
            method.load_state_dict(source_state)
        else:
            student = {
                k.removeprefix("student."): v
                for k, v in source_state.items()
                if k.startswith("student.")
            }
            method.student.load_state_dict(student)
            for teacher in teachers:
                teacher.load_state_dict(student)
    except RuntimeError as e:
        detail = "; ".join(ln.strip() for ln in str(e).strip().splitlines()[1:3])
        raise CheckpointError(
            f"{KEY}={record['path']} ({record['model']}, {len(record['classes'])} classes) does "
            f"not fit this run's model.name={cfg.model.name}: {detail[:300]}. Use the model "
            "settings (model.*) the source was trained with"
        ) from None
    where = None
    if teachers:
        where = "source teachers" if same else "source student"
    return {**record, "teachers": where}


def describe(record: dict[str, Any]) -> str:
    """One line for the log: what started the run."""
    models = "student"
    if record.get("teachers") == "source teachers":
        models = "student and teachers"
    elif record.get("teachers") == "source student":
        models = "student; every teacher a copy of that student"
    return (
        f"init: {models} from {record['path']} ({record['method']}, step {record['step']}, "
        f"sha256 {record['sha256'][:12]}); a fresh schedule from step 0"
    )


def adopt_recorded_source(stored: dict[str, Any], cfg: Config, path) -> Config:
    """The config a resumed run continues with: the ``train.init_from`` it was started with
    (also when this command gives none, so that resuming needs no ``--init-from``). Another
    source than the recorded one is refused: that would be a new run, in its own directory."""
    recorded = stored.get("config", {}).get("train", {}).get("init_from")
    given = cfg.train.init_from
    if given is None:
        return replace(cfg, train=replace(cfg.train, init_from=recorded))
    if recorded is not None and same_checkpoint(given, recorded):
        return replace(cfg, train=replace(cfg.train, init_from=recorded))
    started = f"was started from {recorded}" if recorded else "did not start from a checkpoint"
    raise CheckpointError(
        f"{Path(path).parent} already holds a run (step {stored.get('step')}, {path}) that "
        f"{started}; {KEY}={given} starts a new run: give it a run directory of its own "
        "(--out NEW_DIR)"
    )


def same_checkpoint(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` hold the same checkpoint: one file (through a link or another
    spelling of its path), or a copy of the same bytes (a run folder copied elsewhere)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.resolve() == pb.resolve():
        return True
    try:
        if pa.samefile(pb):
            return True
        return pa.stat().st_size == pb.stat().st_size and file_sha256(pa) == file_sha256(pb)
    except OSError:  # one of them is gone: nothing says they are the same
        return False


__all__ = [
    "adopt_recorded_source",
    "check_classes",
    "describe",
    "load_source",
    "read_source",
    "same_checkpoint",
    "teachers_of",
]
