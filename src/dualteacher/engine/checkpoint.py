"""Checkpoints: self-describing, written atomically, checked on load.

A checkpoint is a dict with ``format``/``version``, the resolved ``config``, the label space
(``classes``, ``palette``), the method's ``state`` (student and every teacher), ``optimizer``,
``scheduler``, ``step`` (optimizer steps done), ``best`` mIoU, ``history`` of validations,
``rng`` states, and ``train_seconds``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualteacher.errors import CheckpointError

FORMAT = "dualteacher-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, fsync,
    then rename over the target. A crash at any point leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # fsync the directory so the rename itself survives a power loss
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: our checkpoints hold RNG states and plain Python containers.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file may be truncated "
            "or not a dualteacher checkpoint; use another one (e.g. latest.pt or best.pt)."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a dualteacher checkpoint (no '{FORMAT}' marker). To start from "
            "pretrained encoder weights use model.pretrained=PATH instead."
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer dualteacher (format version {state['version']}); "
            "upgrade the package to read it"
        )
    return state
