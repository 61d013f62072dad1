"""Checkpoints: self-describing, written atomically, checked on load.

A checkpoint is a dict with ``format``/``version``, the resolved ``config``, the label space
(``classes``, ``palette``), the method's ``state`` (student and every teacher), ``optimizer``,
``scheduler``, ``step`` (optimizer steps done), ``best`` mIoU, ``history`` of validations,
``rng`` states, ``train_seconds`` and the ``guard`` counters (skipped steps and samples).

Checkpoints are data, never code. Everything in one is a tensor, a number, a string, ``None``
or a list / tuple / dict of those, so ``load_checkpoint`` reads it with
``torch.load(weights_only=True)``: a shared ``best.pt`` that carries a pickled object whose
unpickling would run code is refused before anything in it runs. Format version 1 stored
NumPy's random state as an array; those files are still read safely (the NumPy array
reconstructor is the one extra type allowed). ``trust_upgrade`` converts any other older file
that the user trusts, on explicit request only (``dualteacher upgrade-checkpoint --trust``).

A run directory holds ``latest.pt``, ``best.pt`` and the last ``train.keep_last``
step-numbered checkpoints ``step_0000200.pt`` (``latest.pt`` is a hard link to the newest).
"""

from __future__ import annotations

import hashlib
import os
import pickle
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
# 2: every field loads with weights_only=True (NumPy's random state as a tensor).
# 1: NumPy's random state as a NumPy array.
VERSION = 2

# What a version-1 file needs beyond weights_only's tensors and containers: the NumPy array of
# the Mersenne Twister state. These rebuild an array from bytes and run nothing else.
_reconstruct = (
    np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
)
_NUMPY_ARRAY_GLOBALS = [
    _reconstruct,  # the pickle of every ndarray calls this
    # NumPy 1 wrote the same function under its old module name
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]

# The types a checkpoint may hold (``plain``): anything else is a bug of the writer, caught
# when the checkpoint is saved, not when someone fails to load it.
_PLAIN = (torch.Tensor, int, float, str, bool, type(None))


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The random states of this process: torch's CPU generator, NumPy, Python and, on a CUDA
    ``device``, that GPU's generator only (another process's GPUs are not this one's to save,
    and a resumed run may see fewer GPUs)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # a tensor, not NumPy's tuple with an ndarray: a checkpoint holds no NumPy objects
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
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
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):  # format 2; format 1 stored NumPy's own tuple
        numpy_state = (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
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
    _check_plain(state)

    def write(f) -> None:
        torch.save(state, f)

    _atomic_write(path, write)


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the field when ``obj`` holds anything but tensors, numbers,
    strings, ``None`` and containers of those: such a checkpoint would not load with
    ``weights_only=True``. A writer's bug, so a plain exception with its traceback."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__}")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif isinstance(obj, np.generic) or not isinstance(obj, _PLAIN):  # np.float64 is a float
        raise TypeError(
            f"{where} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint holds "
            "only tensors, numbers, strings, None and lists / dicts of them"
        )


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
            f"no readable checkpoint in {out_dir} ({'; '.join(errors)}). Delete the broken "
            "files to start again, or use another run directory (--out)."
        )
    if best is not None and errors:
        print(f"warning: skipped unreadable checkpoint(s): {'; '.join(errors)}", file=sys.stderr)
    if repair and best is not None and best[0] != latest:
        _link_or_copy(best[0], latest)
        print(f"note: {latest} replaced by a link to {best[0].name}", file=sys.stderr)
        best = (latest, best[1])
    return best


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (a checkpoint recorded as a run's
    source, an export's files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    # The safety limits say which files may be read, not how to train: raising the pixel limit
    # for a genuine large image found mid-run, then resuming, is the intended fix.
    "data.max_image_pixels",
    "data.allow_outside_root",
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


def config_changes(stored: dict, current: dict, unread: tuple[str, ...] = ()) -> list[str]:
    """``key: checkpoint value -> current value`` for every key that changes the training;
    ``unread``: key prefixes the run never reads (``methods.unread_settings``), skipped too."""
    a, b = flatten(stored), flatten(current)
    out = []
    # A key on one side only comes from another package version: its old behaviour is unknown.
    for key in sorted(set(a) & set(b)):
        if key.startswith(RESUMABLE_CHANGES + unread):
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
    """Read a checkpoint written by ``save_checkpoint``; a clear error for anything else.

    Parsing is safe: ``torch.load(weights_only=True)`` unpickles tensors, numbers, strings and
    containers only (plus NumPy arrays, for format 1), so a crafted file cannot run code here;
    it is refused with one line before any of its content is used."""
    path = _checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_unsafe_message(path, e)) from None
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file may be truncated "
            "or not a dualteacher checkpoint; use another one (e.g. latest.pt or best.pt)."
        ) from None
    return _checked(state, path)


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        hint = next((path / n for n in ("best.pt", "latest.pt") if (path / n).is_file()), None)
        if hint is None and (path / "model.json").is_file():
            raise CheckpointError(
                f"{path} is a directory (an export, {path / 'model.json'}), not a checkpoint "
                "file: this command needs the checkpoint the export was made from (model.json's "
                '"source"); predict takes the export folder itself'
            )
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint file"
            + (
                f": did you mean {hint}?"
                if hint
                else " (a run directory holds best.pt and latest.pt)"
            )
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _unsafe_message(path: Path, error: Exception) -> str:
    """One line for a file that ``weights_only`` refused: which Python object it wanted to
    build, and the opt-in for a file the user trusts."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return (
        f"{path} was not loaded: it holds a Python object{what} that only unpickling "
        "arbitrary code could build, and a checkpoint from someone else could run code that "
        "way. dualteacher checkpoints hold tensors, numbers and strings only. If you made "
        f"this file yourself with an older dualteacher, convert it once: dualteacher "
        f"upgrade-checkpoint {path} --trust"
    )


def _checked(state: Any, path: Path) -> dict[str, Any]:
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


def trust_upgrade(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite a checkpoint the user trusts in the current, safely loadable format (in place,
    atomically, unless ``out`` is given) and return the path written.

    This unpickles ``path`` with ``weights_only=False``, which runs whatever code the file
    holds: call it only on files you made yourself. Only the checkpoint's own fields are kept,
    each converted to tensors and plain values; anything else is an error naming the field."""
    path = _checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by request
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    state = _checked(state, path)
    rng = state.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {
            "kind": kind,
            "keys": torch.as_tensor(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    state = _plain(state)
    try:
        _check_plain(state)
    except TypeError as e:
        raise CheckpointError(f"{path} cannot be converted: {e}") from None
    state.pop("format", None)
    state.pop("version", None)
    target = Path(out) if out is not None else path
    save_checkpoint(state, target)
    return target


def _plain(obj: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and tensors, paths as strings, recursively."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj
