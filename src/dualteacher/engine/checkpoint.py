"""Checkpoints: self-describing, written atomically, checked on load.

A checkpoint is a dict with ``format``/``version``, the resolved ``config``, the label space
(``classes``, ``palette``), the method's ``state`` (student and every teacher), ``optimizer``,
``scheduler``, ``step`` (optimizer steps done), ``best`` mIoU, ``history`` of validations,
``rng`` states, ``train_seconds`` and the ``guard`` counters (skipped steps and samples).

A run directory holds ``latest.pt``, ``best.pt`` and the last ``train.keep_last``
step-numbered checkpoints ``step_0000200.pt`` (``latest.pt`` is a hard link to the newest).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualteacher.config import flatten
from dualteacher.errors import CheckpointError
from dualteacher.outputs import TMP_SUFFIX, atomic_write, fsync_dir

FORMAT = "dualteacher-checkpoint"
VERSION = 1


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The random states of this process: torch's CPU generator, NumPy, Python and, on a CUDA
    ``device``, that GPU's generator only (another process's GPUs are not this one's to save,
    and a resumed run may see fewer GPUs)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s states; the CUDA one into ``device``. Older checkpoints hold a
    list with the state of every GPU their process saw: the entry of this device's index is
    used (the first one when the list is shorter)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list | tuple):
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, fsync,
    then rename over the target. A crash at any point leaves the previous file intact."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}

    def write(f) -> None:
        torch.save(state, f)

    _atomic_write(path, write)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, rename it over
    ``path`` and fsync the directory (``outputs.atomic_write``). A disk or permission problem,
    also one ``torch.save`` reports as a ``RuntimeError``, is a ``CheckpointError`` that names
    the file and says the previous one is untouched."""
    atomic_write(
        path,
        write,
        durable=True,
        error=CheckpointError,
        fix=f"The previous {path.name} (if any) is untouched; free disk space or fix the "
        f"permissions of {path.parent}, then run the same command again to resume",
    )


_fsync_dir = fsync_dir


STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"step_{step:07d}.pt"


def step_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """The step-numbered checkpoints of a run directory, oldest first."""
    found = []
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            m = STEP_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_run_checkpoint(state: dict[str, Any], out_dir: Path, step: int, keep_last: int) -> Path:
    """Write the checkpoint of ``step``: ``step_XXXXXXX.pt`` (when ``keep_last`` > 0) and
    ``latest.pt``, then delete all but the ``keep_last`` newest step files. Returns
    ``latest.pt``."""
    latest = out_dir / "latest.pt"
    if keep_last <= 0:
        save_checkpoint(state, latest)
        return latest
    target = step_path(out_dir, step)
    save_checkpoint(state, target)
    _link_or_copy(target, latest)
    for _, old in step_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return latest


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a hard link to ``src`` (no second write of the data); where the
    file system has no hard links, an atomic copy."""
    tmp = dst.with_name(f".{dst.name}.link{TMP_SUFFIX}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(src, "rb") as f:
            _atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temporary files a killed process left behind while writing a checkpoint."""
    if out_dir.is_dir():
        for p in out_dir.glob(f".*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)


def find_resume_checkpoint(
    out_dir: Path, repair: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run directory: ``latest.pt``, or a newer or intact
    ``step_*.pt`` when ``latest.pt`` is behind (killed between the two writes), missing or
    unreadable. ``None`` when there is no checkpoint at all. ``repair`` (the process that
    writes the run's files): ``latest.pt`` is then made a link to the step file found, so that
    it is no longer damaged or behind, whatever happens to this run."""
    latest = out_dir / "latest.pt"
    candidates = [p for _, p in reversed(step_checkpoints(out_dir))]
    best: tuple[Path, dict] | None = None
    errors = []
    for path in ([latest] if latest.is_file() else []) + candidates:
        step = _file_step(path)
        if best is not None and step is not None and step <= best[1]["step"]:
            break  # this and the rest are older than the checkpoint found
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if best is None or state["step"] > best[1]["step"]:
            best = (path, state)
    if best is None and errors:
        raise CheckpointError(
            f"no readable checkpoint in {out_dir}:\n  " + "\n  ".join(errors) + "\nDelete the "
            "broken files to start again, or use another run directory (--out)."
        )
    if best is not None and errors:
        print(f"warning: skipped unreadable checkpoint(s): {'; '.join(errors)}", file=sys.stderr)
    if repair and best is not None and best[0] != latest:
        _link_or_copy(best[0], latest)
        print(f"note: {latest} replaced by a link to {best[0].name}", file=sys.stderr)
        best = (latest, best[1])
    return best


def _file_step(path: Path) -> int | None:
    m = STEP_FILE.match(path.name)
    return int(m.group(1)) if m else None


# Keys that may change between the run that wrote a checkpoint and the run that resumes it:
# where files are, how often to log / validate / save, the length and the hardware. Any other
# change alters the training itself, so resuming with it would no longer be the same run.
RESUMABLE_CHANGES = (
    "data.root",
    "data.labeled",
    "data.unlabeled",
    "data.val",
    "data.index",
    "data.rescan",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.skip_bad",
    "model.pretrained",
    "train.steps",
    "train.epochs",
    "train.device",
    "train.threads",
    "train.amp",
    "train.channels_last",
    "train.compile",
    "train.out_dir",
    "train.eval_every",
    "train.eval_teachers",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.tensorboard",
    "train.progress",
    "train.max_minutes",
    "train.curves",
    "train.max_bad_steps",
    "train.deterministic",
    "train.resume_with_changes",
    "eval.",
)


def config_changes(stored: dict, current: dict) -> list[str]:
    """``key: checkpoint value -> current value`` for every key that changes the training."""
    a, b = flatten(stored), flatten(current)
    out = []
    # A key on one side only comes from another package version: its old behaviour is unknown.
    for key in sorted(set(a) & set(b)):
        if key.startswith(RESUMABLE_CHANGES):
            continue
        # YAML / OmegaConf round trips turn tuples into lists
        va, vb = (list(v) if isinstance(v, tuple) else v for v in (a[key], b[key]))
        if va != vb:
            out.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return out


def load_method_state(method: torch.nn.Module, state: dict[str, Any], path) -> None:
    """Load a checkpoint's weights into ``method``; a mismatch (another model, method or class
    count than the checkpoint was made with) is a ``CheckpointError`` naming the keys."""
    try:
        method.load_state_dict(state["state"])
    except RuntimeError as e:
        stored = state.get("config", {})
        first = str(e).strip().splitlines()
        detail = "; ".join(ln.strip() for ln in first[1:4]) or first[0]
        raise CheckpointError(
            f"{path} does not fit this model: it was made with model.name="
            f"{stored.get('model', {}).get('name')!r}, method.name="
            f"{stored.get('method', {}).get('name')!r}, {len(state.get('classes', []))} classes "
            f"({detail[:300]}). Do not override model.* or method.* for an existing checkpoint."
        ) from None


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
