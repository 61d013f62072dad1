"""What identifies a dataset wherever it lies: a run resumes only on the data it started on.

``data_fingerprint(bundle)`` holds the class list and, per set (labelled, unlabelled,
validation, and the selection split of ``data.select`` when there is one), the number of
samples, a digest of their names in order and a digest of those names with their files'
sizes. Paths are left out, so a dataset that was moved or copied elsewhere (``data.root``
changed) still resumes; other images, another split file, another
order or files whose contents changed do not, unless ``train.resume_with_changes=true``.
The sizes are those of every file of a set of up to ``data.FULL_CHECK_MAX`` samples, of a
seeded sample of ``data.SAMPLE_CHECK`` of a larger one (``files_sampled``), so that a pool of
millions starts without a ``stat`` per file; its names are all digested.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dualteacher.data as data_package  # read at call time: tests turn FULL_CHECK_MAX down
from dualteacher.data.base import DataBundle

SETS = ("labeled", "unlabeled", "val")
OPTIONAL_SETS = ("select",)  # in a fingerprint only when the run has one (data.select)


def _size(path: Path | None) -> int:
    if path is None:
        return -1
    try:
        return path.stat().st_size
    except OSError:
        return -2


def data_fingerprint(bundle: DataBundle) -> dict:
    """``{"classes": [...], "labeled": {"count", "names", "files"}, ...}`` (see the module
    docstring). In-memory sets (the demo, generated from ``data.demo.*``, which the config
    check covers) have a count only. One ``stat`` per file of a set, or of its sample."""
    out: dict = {"classes": list(bundle.classes)}
    optional = [n for n in OPTIONAL_SETS if getattr(bundle, n, None) is not None]
    for name in (*SETS, *optional):
        source = getattr(bundle, name)
        info: dict = {"count": len(source) if source is not None else 0}
        entries = getattr(source, "entries", None)
        if entries is not None:
            n = len(entries)
            names, files = hashlib.sha256(), hashlib.sha256()
            chunks = entries.name_chunks() if hasattr(entries, "name_chunks") else None
            for chunk in chunks or [[e.name for e in entries]]:
                if chunk:  # the digest of every name + "\0", in order, one update per chunk
                    names.update("\0".join(chunk).encode() + b"\0")
            picked = (
                range(n)
                if n <= data_package.FULL_CHECK_MAX
                else data_package.sample_indices(n, data_package.SAMPLE_CHECK).tolist()
            )
            for i in picked:
                e = entries[i]
                files.update(f"{e.name}\0{_size(e.image)}\0{_size(e.mask)}\0".encode())
            info["names"], info["files"] = names.hexdigest()[:16], files.hexdigest()[:16]
            if len(picked) < n:
                info["files_sampled"] = len(picked)
        out[name] = info
    return out


def data_changes(stored: dict | None, current: dict) -> list[str]:
    """How ``current`` differs from the ``stored`` fingerprint, one line per change, in the
    style of ``dualteacher.checkpoint.config_changes``; nothing for a checkpoint without one."""
    if not stored:
        return []
    out = []
    if stored.get("classes") != current["classes"]:
        out.append(f"data classes: {stored.get('classes')} -> {current['classes']}")
    optional = [n for n in OPTIONAL_SETS if n in stored or n in current]
    for name in (*SETS, *optional):
        a, b = stored.get(name) or {}, current.get(name) or {"count": 0}
        if a.get("count") != b["count"]:
            out.append(f"data {name} set: {a.get('count')} -> {b['count']} images")
        elif "names" in a and "names" in b and a["names"] != b["names"]:
            out.append(f"data {name} set: other images (names or order), same count {b['count']}")
        elif "files" in a and "files" in b and a["files"] != b["files"]:
            out.append(f"data {name} set: same image names, files of other sizes (changed)")
    return out
