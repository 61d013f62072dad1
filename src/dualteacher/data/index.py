"""Compact entry lists and cached folder scans, for sets of millions of images.

``EntryTable`` holds the files of one set (labelled, unlabelled or validation) in a few numpy
arrays instead of a list of Python objects: per entry, the file name's UTF-8 bytes in one
buffer, its end offset (4 bytes) and the index of its folder (4 bytes); folders, and the rule
that gives each entry its name, are stored once per folder. An unlabelled image costs about
``len(file name) + 8`` bytes, and DataLoader workers forked from the main process share the
arrays: reading never writes to their pages, so there is no copy-on-write growth (a list of
``Path`` objects is copied page by page as soon as the workers touch their reference counts).
``table[i]`` builds the ``Entry`` of one sample when it is read.

``ScanIndex`` caches the scans of folders (``scan_folder``) in one ``.npz`` file: next to the
run (``RUN_DIR/data_index.npz``) or where ``data.index`` says. A cached scan is used while no
scanned folder changed: the modification time of every scanned directory (one ``stat`` per
directory, none per file) is compared with the one stored, and a directory that changes when a
file is added, removed or renamed in it invalidates the scan. Changing a file in place does
not (a scan only lists names). ``data.rescan=true`` (``--rescan``) scans again anyway. A
directory modified less than ``RACY_SECONDS`` before its scan is not cached, since a file
written in the same clock tick would not change its time (file systems with coarse times).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import itertools
import json
import os
import sys
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualteacher.errors import DataError

INDEX_NAME = "data_index.npz"  # default index file in a run directory
INDEX_VERSION = 1
RACY_SECONDS = 2.0
CHUNK = 1 << 16  # strings decoded at once by the iterators (bounds temporary memory)
GATHER = 1 << 13  # strings gathered at once by ``Strings.take``
MAX_GROUPS = 1 << 20  # folder/name rules per table; entries past that keep their name apart


@dataclass(frozen=True)
class Entry:
    """One sample's files, as ``EntryTable[i]`` gives it."""

    image: Path
    mask: Path | None  # None: unlabelled
    name: str  # stable id, e.g. the file stem


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """End offsets with a leading 0: ``(n + 1,)`` uint32, or int64 past 4 GiB of text."""
    total = int(lengths.sum()) if len(lengths) else 0
    out = np.zeros(len(lengths) + 1, np.uint32 if total < 2**32 else np.int64)
    out[1:] = np.cumsum(lengths)
    return out


class Strings:
    """``n`` strings in one UTF-8 buffer: string ``i`` is ``blob[offsets[i]:offsets[i + 1]]``."""

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_list(cls, items: Iterable[str]) -> Strings:
        b = StringsBuilder()
        b.extend(items)
        return b.build()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes().decode()

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
        """The strings ``start:stop`` as lists of at most ``CHUNK`` (one decode per chunk)."""
        stop = len(self) if stop is None else stop
        for a in range(start, stop, CHUNK):
            b = min(a + CHUNK, stop)
            first = int(self.offsets[a])
            raw = self.blob[first : int(self.offsets[b])].tobytes()
            ends = (self.offsets[a : b + 1].astype(np.int64) - first).tolist()
            yield [raw[x:y].decode() for x, y in itertools.pairwise(ends)]

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks():
            yield from chunk

    def take(self, which) -> Strings:
        """The strings at the indices ``which`` in that order, or where the boolean mask
        ``which`` is True. Runs of consecutive strings are copied as slices (a mask that drops
        a few strings is a few runs: no temporary array of the table's length but the mask's);
        scattered indices are gathered ``GATHER`` strings at a time."""
        which = np.asarray(which)
        runs = _runs(which)
        if runs is None:
            return self._gather(which.astype(np.int64))
        count = sum(b - a for a, b in runs)
        size = sum(int(self.offsets[b]) - int(self.offsets[a]) for a, b in runs)
        offsets = np.zeros(count + 1, np.uint32 if size < 2**32 else np.int64)
        blob = np.empty(size, np.uint8)
        at = pos = 0  # strings and bytes written
        for a, b in runs:
            first, last = int(self.offsets[a]), int(self.offsets[b])
            blob[pos : pos + last - first] = self.blob[first:last]
            out = offsets[at + 1 : at + 1 + b - a]
            shift = pos - first
            np.add(self.offsets[a + 1 : b + 1], shift, out=out, dtype=np.int64, casting="unsafe")
            at, pos = at + b - a, pos + last - first
        return Strings(blob, offsets)

    def _gather(self, indices: np.ndarray) -> Strings:
        lengths = self.offsets[indices + 1].astype(np.int64) - self.offsets[indices]
        offsets = _offsets(lengths)
        del lengths
        blob = np.empty(int(offsets[-1]), np.uint8)
        for a in range(0, len(indices), GATHER):
            idx = indices[a : a + GATHER]
            s = self.offsets[idx].astype(np.int64)
            n = self.offsets[idx + 1].astype(np.int64) - s
            out = offsets[a : a + len(idx)].astype(np.int64)
            # byte j of this part comes from s[k] + (j - out[k]) for the string k holding j
            pos = np.repeat(s - out, n) + np.arange(int(out[0]), int(out[0] + n.sum()))
            blob[int(out[0]) : int(out[0]) + len(pos)] = self.blob[pos]
        return Strings(blob, offsets)

    @staticmethod
    def concat(parts: Sequence[Strings]) -> Strings:
        count = sum(len(p) for p in parts)
        size = sum(len(p.blob) for p in parts)
        offsets = np.zeros(count + 1, np.uint32 if size < 2**32 else np.int64)
        blob = np.empty(size, np.uint8)
        at = pos = 0
        for p in parts:  # offsets start at 0 in every Strings
            blob[pos : pos + len(p.blob)] = p.blob
            out = offsets[at + 1 : at + 1 + len(p)]
            np.add(p.offsets[1:], pos, out=out, dtype=np.int64, casting="unsafe")
            at, pos = at + len(p), pos + len(p.blob)
        return Strings(blob, offsets)

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.offsets.nbytes


class StringsBuilder:
    """Appends strings to one growing byte buffer (no Python object kept per string)."""

    def __init__(self):
        self._buf = bytearray()
        self._lengths = array("q")

    def __len__(self) -> int:
        return len(self._lengths)

    def append(self, s: str) -> None:
        b = s.encode()
        self._buf += b
        self._lengths.append(len(b))

    def extend(self, items: Iterable[str]) -> None:
        items = list(items)
        lengths = list(map(len, items))
        data = "".join(items).encode()
        if len(data) != sum(lengths):  # not all ASCII: byte lengths differ from str lengths
            lengths = [len(s.encode()) for s in items]
        self._buf += data
        self._lengths.extend(lengths)

    def build(self) -> Strings:
        lengths = np.frombuffer(self._lengths, np.int64) if self._lengths else np.zeros(0, np.int64)
        blob = np.frombuffer(self._buf, np.uint8) if self._buf else np.empty(0, np.uint8)
        return Strings(blob, _offsets(lengths))


def _runs(which: np.ndarray) -> list[tuple[int, int]] | None:
    """``[(a, b), ...]``: ``which`` (a boolean mask, or indices) selects ``a:b`` for each run,
    in order; None for indices that make too many runs to copy one by one."""
    if which.dtype == bool:
        edges = np.diff(np.concatenate([[0], which.view(np.int8), [0]]))
        return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
    if not len(which):
        return []
    breaks = np.flatnonzero(np.diff(which) != 1) + 1
    if len(breaks) > max(16, len(which) // 64):
        return None
    bounds = [0, *breaks.tolist(), len(which)]
    return [(int(which[a]), int(which[b - 1]) + 1) for a, b in itertools.pairwise(bounds)]


def _split(path: str) -> tuple[str, str]:
    """(folder with its trailing separator, file name) of a path string."""
    cut = max(path.rfind(os.sep), path.rfind("/")) + 1
    return path[:cut], path[cut:]


def file_stem(file: str) -> str:
    stem, dot, _ = file.rpartition(".")
    return stem if dot and stem else file


class EntryTable(Sequence):
    """The files of one set, compactly (see the module docstring); a ``Sequence[Entry]``.

    Entry ``i``: image ``dirs[g] + file``, name ``prefixes[g] + stem(file)`` without its last
    ``cuts[g]`` characters (``names`` holds the names that follow no such rule), where
    ``g = group[i]``; mask ``mask_dirs[mask_dir[i]] + mask_files[i]``, or None where
    ``mask_dir[i] < 0`` or the table has no masks.
    """

    def __init__(
        self,
        groups: Sequence[tuple[str, str, int]],
        group: np.ndarray,
        files: Strings,
        masks: tuple[Sequence[str], np.ndarray, Strings] | None = None,
        names: dict[int, str] | None = None,
    ):
        self.groups = tuple(groups)  # (folder with trailing separator, name prefix, cut)
        self.group = group  # (n,) uint32
        self.files = files  # image file names
        self.masks = masks  # (mask folders, (n,) int32 folder index or -1, mask file names)
        self.names = names or {}

    # --------------------------------------------------------------------------- building
    @classmethod
    def empty(cls) -> EntryTable:
        return cls((), np.zeros(0, np.uint32), Strings.from_list([]))

    @classmethod
    def from_entries(cls, entries: Iterable) -> EntryTable:
        if isinstance(entries, EntryTable):
            return entries
        b = TableBuilder()
        for e in entries:
            b.add(e.image, e.mask, e.name)
        return b.build()

    @staticmethod
    def concat(tables: Sequence[EntryTable]) -> EntryTable:
        tables = [EntryTable.from_entries(t) for t in tables]
        if sum(len(t) > 0 for t in tables) <= 1:  # nothing to copy
            return next((t for t in tables if len(t)), tables[0] if tables else EntryTable.empty())
        groups: dict[tuple[str, str, int], int] = {}
        remapped, names, offset = [], {}, 0
        for t in tables:
            lookup = np.array([groups.setdefault(g, len(groups)) for g in t.groups], np.uint32)
            remapped.append(lookup[t.group] if len(t.group) else t.group.astype(np.uint32))
            names.update({offset + i: n for i, n in t.names.items()})
            offset += len(t)
        masks = None
        if any(t.masks is not None for t in tables):
            dirs: dict[str, int] = {}
            ids, files = [], []
            for t in tables:
                if t.masks is None:  # no mask: folder -1 and an empty file name
                    ids.append(np.full(len(t), -1, np.int32))
                    files.append(Strings(np.empty(0, np.uint8), np.zeros(len(t) + 1, np.uint32)))
                    continue
                lookup = np.array([dirs.setdefault(d, len(dirs)) for d in t.masks[0]] + [-1])
                ids.append(lookup[t.masks[1]].astype(np.int32))  # index -1 picks the last: -1
                files.append(t.masks[2])
            masks = (tuple(dirs), np.concatenate(ids), Strings.concat(files))
        group = np.concatenate(remapped) if remapped else np.zeros(0, np.uint32)
        return EntryTable(
            tuple(groups), group, Strings.concat([t.files for t in tables]), masks, names
        )

    def __add__(self, other) -> EntryTable:
        return EntryTable.concat([self, other])

    def __radd__(self, other) -> EntryTable:
        return EntryTable.concat([other, self])

    def take(self, which) -> EntryTable:
        """The entries at the indices ``which`` in that order, or where the boolean mask
        ``which`` is True."""
        which = np.asarray(which)
        if which.dtype != bool:
            which = which.astype(np.int64)
            if len(which) == len(self) and np.array_equal(which, np.arange(len(self))):
                return self
        elif which.all():
            return self
        masks = None
        if self.masks is not None:
            dirs, ids, files = self.masks
            masks = (dirs, ids[which], files.take(which))
        names = {}
        if self.names:
            old = np.flatnonzero(which) if which.dtype == bool else which
            keys = np.fromiter(self.names, np.int64, len(self.names))
            for new in np.flatnonzero(np.isin(old, keys)).tolist():
                names[new] = self.names[int(old[new])]
        return EntryTable(self.groups, self.group[which], self.files.take(which), masks, names)

    def without_masks(self) -> EntryTable:
        return EntryTable(self.groups, self.group, self.files, None, self.names)

    def with_masks(self, masks: Sequence[str | os.PathLike | None]) -> EntryTable:
        """This table with mask ``masks[i]`` for entry ``i``."""
        if len(masks) != len(self):
            raise ValueError(f"{len(masks)} masks for {len(self)} entries")
        dirs: dict[str, int] = {}
        ids, files = array("i"), StringsBuilder()
        for m in masks:
            if m is None:
                ids.append(-1)
                files.append("")
                continue
            d, f = _split(os.fspath(m))
            ids.append(dirs.setdefault(d, len(dirs)))
            files.append(f)
        ids_np = np.frombuffer(ids, np.int32) if ids else np.zeros(0, np.int32)
        masks_ = (tuple(dirs), ids_np, files.build())
        return EntryTable(self.groups, self.group, self.files, masks_, self.names)

    def renamed(self, prefix: str) -> EntryTable:
        """Names with ``prefix`` in front (e.g. ``unlabeled/``)."""
        groups = [(d, prefix + p, c) for d, p, c in self.groups]
        names = {i: prefix + n for i, n in self.names.items()}
        return EntryTable(groups, self.group, self.files, self.masks, names)

    def drop_images(self, taken: Iterable) -> EntryTable:
        """The entries whose image is not the image of any entry in ``taken`` (compared as
        ``files.image_key`` compares them); only folders holding such an image are looked at
        entry by entry."""
        by_dir: dict[str, set[str]] = {}
        for e in taken:
            d, f = os.path.split(os.path.normcase(os.path.abspath(e.image)))
            by_dir.setdefault(d, set()).add(f)
        if not by_dir or not len(self):
            return self
        dir_keys = [os.path.normcase(os.path.abspath(d or ".")) for d, _, _ in self.groups]
        hit = [g for g, k in enumerate(dir_keys) if k in by_dir]
        if not hit:
            return self
        drop = []
        for i in np.flatnonzero(np.isin(self.group, hit)).tolist():
            g = int(self.group[i])
            if os.path.normcase(self.files[i]) in by_dir[dir_keys[g]]:
                drop.append(i)
        if not drop:
            return self
        keep = np.ones(len(self), bool)
        keep[drop] = False
        return self.take(keep)

    # ---------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.group)

    def image(self, i: int) -> str:
        return self.groups[int(self.group[i])][0] + self.files[i]

    def mask(self, i: int) -> str | None:
        if self.masks is None or self.masks[1][i] < 0:
            return None
        return self.masks[0][int(self.masks[1][i])] + self.masks[2][i]

    def name(self, i: int) -> str:
        if i in self.names:
            return self.names[i]
        _, prefix, cut = self.groups[int(self.group[i])]
        stem = file_stem(self.files[i])
        return prefix + (stem[: len(stem) - cut] if cut else stem)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"entry {i} of {n}")
        i %= n
        mask = self.mask(i)
        return Entry(Path(self.image(i)), Path(mask) if mask is not None else None, self.name(i))

    def name_chunks(self) -> Iterator[list[str]]:
        """Every name, in order, as lists of at most ``CHUNK`` (decoded a chunk at a time)."""
        start = 0
        for chunk in self.files.chunks():
            rules = [self.groups[g] for g in self.group[start : start + len(chunk)].tolist()]
            names = []
            for k, (file, (_, prefix, cut)) in enumerate(zip(chunk, rules)):
                if self.names and start + k in self.names:
                    names.append(self.names[start + k])
                    continue
                stem = file_stem(file)
                names.append(prefix + (stem[: len(stem) - cut] if cut else stem))
            yield names
            start += len(chunk)

    def iter_names(self) -> Iterator[str]:
        for chunk in self.name_chunks():
            yield from chunk

    def iter_images(self) -> Iterator[str]:
        start = 0
        for chunk in self.files.chunks():
            dirs = [self.groups[g][0] for g in self.group[start : start + len(chunk)].tolist()]
            yield from (d + f for d, f in zip(dirs, chunk))
            start += len(chunk)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the per-entry cost; folders and rules are few)."""
        n = self.group.nbytes + self.files.nbytes
        if self.masks is not None:
            n += self.masks[1].nbytes + self.masks[2].nbytes
        return n


class TableBuilder:
    """Builds an ``EntryTable`` one entry (``add``) or one folder (``add_folder``) at a time."""

    def __init__(self):
        self._groups: dict[tuple[str, str, int], int] = {}
        self._group = array("I")
        self._files = StringsBuilder()
        self._masks: list | None = None  # mask path strings (labelled sets are small)
        self._names: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._group)

    def _group_id(self, key: tuple[str, str, int]) -> int:
        return self._groups.setdefault(key, len(self._groups))

    def add(self, image, mask, name: str) -> None:
        d, f = _split(os.fspath(image))
        stem = file_stem(f)
        if name.endswith(stem):
            key = (d, name[: len(name) - len(stem)], 0)
        elif name and stem.startswith(name):
            key = (d, "", len(stem) - len(name))  # e.g. Cityscapes: stem minus _leftImg8bit
        else:
            key = None
        if key is None or (key not in self._groups and len(self._groups) >= MAX_GROUPS):
            key = (d, "", 0)  # a name that follows no rule (or too many rules): kept apart
            self._names[len(self._group)] = name
        self._group.append(self._group_id(key))
        self._files.append(f)
        if mask is not None and self._masks is None:
            self._masks = [None] * (len(self._group) - 1)
        if self._masks is not None:
            self._masks.append(None if mask is None else os.fspath(mask))

    def add_folder(self, folder: str, files: list[str], prefix: str) -> None:
        """Files of one folder (``folder`` ends with a separator), named ``prefix + stem``."""
        self._group.extend([self._group_id((folder, prefix, 0))] * len(files))
        self._files.extend(files)
        if self._masks is not None:
            self._masks.extend([None] * len(files))

    def build(self) -> EntryTable:
        group = np.frombuffer(self._group, np.uint32) if self._group else np.zeros(0, np.uint32)
        table = EntryTable(tuple(self._groups), group, self._files.build(), None, self._names)
        return table.with_masks(self._masks) if self._masks is not None else table


# --------------------------------------------------------------------------------- scans
def scan_folder(
    folder: Path, exts: tuple[str, ...] | None
) -> tuple[EntryTable, list[tuple[str, int]], bool]:
    """Every file under ``folder`` whose lower-case extension is in ``exts`` (every file with
    ``exts=None``), sub-folders included (symbolic links followed, once each), hidden files
    and folders skipped; in the order of a sorted top-down walk. Names are paths relative to
    ``folder`` without extension, "/"-separated.

    Returns (the table, every scanned directory with its modification time in ns, whether the
    scan may be cached). No file is opened or ``stat``-ed, only the directories.
    Two images of one name (``a.jpg`` and ``a.png``) raise ``DataError``.
    """
    start = time.time_ns()
    base = os.fspath(folder)
    builder = TableBuilder()
    watched: list[tuple[str, int]] = []
    seen: set[tuple[int, int]] = set()
    stack = [""]
    clashes: list[str] = []  # every pair of images of one name, listed together at the end
    while stack:
        sub = stack.pop()
        path = os.path.join(base, sub) if sub else base
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
            continue
        seen.add((st.st_dev, st.st_ino))
        watched.append((sub, st.st_mtime_ns))
        files, dirs = [], []
        with os.scandir(path) as it:
            for e in it:
                n = e.name
                if n[0] == ".":
                    continue
                if exts is not None and n.lower().endswith(exts):
                    files.append(n)  # taken for a file by its name: no per-file call at all
                elif _is_dir(e):
                    dirs.append(n)
                elif exts is None:
                    files.append(n)
        files.sort()
        if exts is not None:
            clashes += _two_of_one_name(path, files)
        if files:
            prefix = sub.replace(os.sep, "/") + "/" if sub else ""
            builder.add_folder(path + os.sep, files, prefix)
        stack.extend(os.path.join(sub, d) if sub else d for d in sorted(dirs, reverse=True))
    if clashes:
        raise DataError(
            "; ".join(f"{c} have the same name" for c in clashes)
            + f": keep one image per name in {folder}"
            + (f" ({len(clashes)} pairs)" if len(clashes) > 1 else "")
        )
    racy = start - int(RACY_SECONDS * 1e9)
    return builder.build(), watched, all(m < racy for _, m in watched)


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # from the directory listing (d_type); a stat only for links
    except OSError:
        return False


def _two_of_one_name(path: str, files: list[str]) -> list[str]:
    """``"a.jpg and a.png"`` for every two files of one name in the folder ``path``."""
    if len({f[: f.rfind(".")] for f in files}) == len(files):  # every file has an extension
        return []
    first: dict[str, str] = {}
    clashes = []
    for f, s in zip(files, map(file_stem, files)):
        if s in first:
            clashes.append(f"{os.path.join(path, first[s])} and {os.path.join(path, f)}")
        else:
            first[s] = f
    return clashes


class ScanIndex:
    """Folder scans cached in the ``.npz`` file ``path`` (see the module docstring).

    ``scan(folder, exts)`` is ``scan_folder``'s table, from the file when it is still valid.
    ``save()`` writes the file when something was scanned (atomically; a failure to write is
    a warning, never an error). ``path=None``: nothing is cached.
    """

    def __init__(self, path: Path | None, rescan: bool = False, update: bool = True):
        self.path, self.rescan, self.update = path, rescan, update
        self.header: dict = {}  # key -> {"id", "subs", "watched"} of the scans in the file
        self.fresh: dict[str, tuple[dict, dict[str, np.ndarray]]] = {}  # scanned by this build
        self.used: list[str] = []  # what this build read from the file or scanned, for reports
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    header = json.loads(z["header"].tobytes().decode())
                folders = header["folders"] if header.get("version") == INDEX_VERSION else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise DataError(
                    f"{path} is not a data index of this package ({type(e).__name__}: {e}); "
                    "give data.index a new file name, or delete the file"
                ) from None
            self.header = folders  # another version's index is scanned again and rewritten

    def _arrays(self, keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """The stored arrays of the scans ``keys`` (read from the file only when needed)."""
        assert self.path is not None
        with np.load(self.path, allow_pickle=False) as z:
            return {k: {a: z[f"{self.header[k]['id']}.{a}"] for a in ARRAYS} for k in keys}

    @staticmethod
    def key(folder: Path, exts: tuple[str, ...] | None) -> str:
        return f"{os.path.abspath(folder)}|{','.join(exts) if exts is not None else '*'}"

    def _valid(self, key: str, folder: Path) -> bool:
        meta = self.header.get(key)
        if meta is None:
            return False
        try:
            return all(
                os.stat(os.path.join(folder, sub) if sub else folder).st_mtime_ns == mtime
                for sub, mtime in meta["watched"]
            )
        except OSError:
            return False

    def scan(self, folder: Path, exts: tuple[str, ...] | None) -> EntryTable:
        key = self.key(folder, exts)
        if key in self.fresh:
            return _table(folder, *self.fresh[key])
        if self.path is not None and not self.rescan and self._valid(key, folder):
            try:
                arrays = self._arrays([key])[key]
            except (OSError, ValueError, KeyError):
                arrays = None  # a damaged file: scan
            if arrays is not None:
                self.used.append(f"{folder} (from {self.path})")
                return _table(folder, self.header[key], arrays)
        table, watched, cacheable = scan_folder(folder, exts)
        self.used.append(f"{folder} (scanned)")
        if self.path is not None and cacheable:
            self.fresh[key] = _stored(folder, table, watched)
        return table

    def save(self) -> None:
        if self.path is None or not self.fresh or not self.update:
            return
        folders = {k: m for k, m in self.header.items() if k not in self.fresh}
        try:  # other scans in the file (another root or config) are kept
            arrays = self._arrays(list(folders)) if folders else {}
        except (OSError, ValueError, KeyError):
            folders, arrays = {}, {}
        for key, (meta, stored) in self.fresh.items():
            folders[key], arrays[key] = meta, stored
        out: dict[str, np.ndarray] = {}
        for i, key in enumerate(folders):
            folders[key] = {**folders[key], "id": i}
            out.update({f"{i}.{k}": arrays[key][k] for k in ARRAYS})
        header = json.dumps({"version": INDEX_VERSION, "folders": folders}).encode()
        out["header"] = np.frombuffer(header, np.uint8)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, **out)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            print(f"warning: could not write the data index {self.path}: {e}", file=sys.stderr)


ARRAYS = ("group", "blob", "offsets")


def _stored(folder: Path, table: EntryTable, watched) -> tuple[dict, dict[str, np.ndarray]]:
    """A scan as stored in the index: sub-folders relative to ``folder``."""
    base = os.fspath(folder) + os.sep
    subs = [d[len(base) : -1] if d != base else "" for d, _, _ in table.groups]
    meta = {"subs": subs, "watched": [list(w) for w in watched]}
    arrays = {"group": table.group, "blob": table.files.blob, "offsets": table.files.offsets}
    return meta, arrays


def _table(folder: Path, meta: dict, arrays: dict[str, np.ndarray]) -> EntryTable:
    base = os.fspath(folder) + os.sep
    groups = []
    for sub in meta["subs"]:
        if sub:
            groups.append((base + sub + os.sep, sub.replace(os.sep, "/") + "/", 0))
        else:
            groups.append((base, "", 0))
    return EntryTable(groups, arrays["group"], Strings(arrays["blob"], arrays["offsets"]))


_ACTIVE: contextvars.ContextVar[ScanIndex | None] = contextvars.ContextVar(
    "dualteacher_scan_index", default=None
)


@contextlib.contextmanager
def using_index(index: ScanIndex):
    """Let ``scan`` calls inside the block use ``index``; save it at the end of the block."""
    token = _ACTIVE.set(index)
    try:
        yield index
        index.save()
    finally:
        _ACTIVE.reset(token)


def scan(folder: Path, exts: tuple[str, ...] | None) -> EntryTable:
    """``scan_folder``'s table, through the active ``ScanIndex`` (no cache without one)."""
    index = _ACTIVE.get()
    if index is None:
        return scan_folder(folder, exts)[0]
    return index.scan(folder, exts)


def release_free_memory() -> None:
    """Give the heap memory freed while building tables back to the system (glibc's
    ``malloc_trim``; nothing elsewhere), so that DataLoader workers forked later do not map it:
    each worker's RSS counts every resident page of the main process at the fork."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
