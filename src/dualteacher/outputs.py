"""Writing output files: atomically, and with one clear error when the disk is full.

Every file a command writes (checkpoints, ``config.yaml``, summaries, reports, plots,
predictions, split files) goes through ``atomic_write``: the data goes to a temporary file
next to the target, which is renamed over it only once complete. A full disk, a quota or a
permission problem at any point removes the temporary file, leaves the previous file (if any)
as it was, and raises ``WriteError`` naming the file and the fix; the CLI prints it as one
line. No partial or 0-byte file is left behind.

A command that writes under an output folder (``--out``) runs inside ``writing_under(DIR)``
(or is decorated ``@writes_under("out_dir")``): then every write under ``DIR`` whose path,
links followed, leads outside ``DIR`` (``DIR/masks`` a link to another folder, or a file link
left inside ``DIR``) is refused with a ``WriteError`` before anything is created, so a folder
prepared by someone else cannot redirect the outputs over other files (SECURITY.md). ``DIR``
itself may be a link (e.g. to a larger disk).
"""

from __future__ import annotations

import contextvars
import errno
import functools
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from PIL import Image

from dualteacher.errors import DualTeacherError, WriteError

TMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" next to their target

_fdopen = os.fdopen  # tests replace it to simulate a full disk

# The output folder of the command running in this thread (``writing_under``); None: any path.
_OUT_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("out_dir", default=None)


@contextmanager
def writing_under(out_dir: str | Path) -> Iterator[None]:
    """Within the block, writes under ``out_dir`` must stay inside it (``check_inside_out``)."""
    token = _OUT_DIR.set(Path(out_dir))
    try:
        yield
    finally:
        _OUT_DIR.reset(token)


def writes_under(param: str) -> Callable:
    """Decorator: run the function ``writing_under`` its argument ``param`` (a command's
    output folder)."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out_dir = signature.bind(*args, **kwargs).arguments[param]
            with writing_under(out_dir):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """Raise ``WriteError`` (one line, status 2) when the output folder ``path`` cannot be a
    folder: it is an existing file, or one of its parents is."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise WriteError(
            f"{flag} {path} is a file, not a folder: give a new folder (or one this command "
            "wrote before); the file is left as it is"
        )
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WriteError(
                    f"{flag} {path}: its parent {parent} is a file, not a folder: give a "
                    "folder path whose parents are folders"
                )
            break


def check_inside_out(path: str | Path) -> None:
    """Raise ``WriteError`` when ``path`` lies under the current output folder as written but
    leads outside it once links are followed (of its folders, or the file itself)."""
    out_dir = _OUT_DIR.get()
    if out_dir is None:
        return
    top = os.path.abspath(out_dir)
    full = os.path.abspath(path)
    if os.path.commonpath([top, full]) != top:
        return  # not under the output folder (a run directory elsewhere): not this check's
    real_top, real = os.path.realpath(top), os.path.realpath(full)
    if os.path.commonpath([real_top, real]) != real_top:
        raise WriteError(
            f"refusing to write {path}: a symbolic link leads it outside the output folder "
            f"{out_dir}, to {real}. Remove the link (or choose another --out)"
        )


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one it was raised from or while handling.
    (``torch.save`` reports a failed write of its file object as a ``RuntimeError`` whose
    context is the ``OSError``.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_os_error(e: OSError) -> str:
    """``No space left on device (ENOSPC)``."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    return f"{e.strerror or e}" + (f" ({name})" if name else "")


def default_fix(path: Path) -> str:
    return (
        f"Free disk space or fix the permissions of {path.parent}, then run the same command "
        "again (a training run resumes from its last checkpoint)"
    )


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], Any],
    *,
    durable: bool = False,
    error: type[DualTeacherError] = WriteError,
    fix: str | None = None,
) -> Path:
    """Call ``write(file)`` on a temporary binary file next to ``path`` and rename it over
    ``path``. ``durable``: fsync the file and its folder, so that the rename survives a power
    loss (checkpoints). An ``OSError`` (also one wrapped by the writer) becomes ``error``
    naming the file, with ``fix`` (default: free disk space / fix permissions, run again)."""
    path = Path(path)
    tmp = None
    check_inside_out(path)  # before mkdir: a link must not make us create folders elsewhere
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with _fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            fsync_dir(path.parent)
    except Exception as e:
        cause = os_error_in(e)
        if cause is None or isinstance(e, DualTeacherError):
            raise
        raise error(
            f"could not write {path}: {describe_os_error(cause)}. {fix or default_fix(path)}."
        ) from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: str | Path, text: str, **kw) -> Path:
    """``Path.write_text``, atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(text.encode()), **kw)


def write_json(path: str | Path, obj: Any, **kw) -> Path:
    return write_text(path, json.dumps(obj, indent=2), **kw)


def save_image(image, path: str | Path, **kw) -> Path:
    """``PIL.Image.save`` to ``path`` (format from its suffix), atomically."""
    fmt = Image.registered_extensions()[Path(path).suffix.lower()]
    return atomic_write(path, lambda f: image.save(f, format=fmt), **kw)


def save_figure(fig, path: str | Path, **kw) -> Path:
    """``Figure.savefig`` to ``path`` (format from its suffix), atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:]), **kw)
