"""Split files: which images are labelled, unlabelled or validation.

Formats read (one sample per line; empty lines and lines starting with ``#`` are skipped):

- an id: ``2007_000032`` (U2PL's VOC lists; the dataset knows where that id's files are);
- one path: ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`` (U2PL's
  Cityscapes lists); the mask path is derived from the image path;
- two paths: ``JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png`` (UniMatch,
  UniMatch V2).

Paths are relative to the dataset directory, to ``data.root`` or to the working directory
(absolute paths work too), and must lead to files under ``data.root``: an entry that does not
(``../../x``, ``/elsewhere/x.jpg``) is refused, naming the split file, its line and the
entry, unless ``data.allow_outside_root=true`` (your own lists of images kept elsewhere). The
check is on the path as written, ``..`` resolved, without following symbolic links: links the
dataset's owner put inside ``data.root`` (e.g. ``JPEGImages`` -> another disk) still work. A
split file may come from others (a paper's repository, a colleague); this keeps it from
making a run read files outside the dataset (SECURITY.md).
When a listed mask does not exist, the dataset may substitute an equivalent file (VOC:
``SegmentationClassAug/`` for ``SegmentationClass/``; Cityscapes: ``*_labelIds.png`` for
``*_labelTrainIds.png``). When a listed image does not exist at its path, its file name is
looked up as an id (so Dual Teacher's ADE lists, which name physically split folders, work
on the standard layout). Mask paths in unlabelled lists are ignored: unlabelled images are
never read with a mask. Files are read as a stream into compact tables; an unlabelled file's
paths are looked up on disk only for its first lines (``read_split``).

``dualteacher splits`` writes ``labeled.txt`` (``image mask`` pairs) and ``unlabeled.txt``
(image paths) relative to ``data.root``, drawn reproducibly from a seed; with the same seed,
a smaller labelled set is a subset of a larger one.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from dualteacher.config import DataConfig
from dualteacher.data import standard_splits
from dualteacher.data.files import IMAGE_EXTS, Entry, exclude, without_masks
from dualteacher.data.index import EntryTable, TableBuilder, file_stem
from dualteacher.errors import DataError
from dualteacher.outputs import write_text

PROBE_LINES = 16  # image paths of an unlabelled split file looked up on disk (see read_split)
FORMATS = (
    "one id per line (2007_000032), one image path per line, or 'image mask' path pairs "
    "(JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png), paths relative to data.root"
)


class Layout(Protocol):
    """Where one dataset keeps its files (implemented by each dataset module)."""

    root: Path  # the dataset directory (holding JPEGImages/, leftImg8bit/, images/, ...)

    def from_id(self, name: str, labeled: bool) -> Entry:
        """The files of the sample called ``name``; mask None when ``labeled`` is False."""
        ...

    def from_paths(self, image: Path, mask: Path | None) -> Entry:
        """A labelled entry for ``image``: ``mask`` if it exists, else an equivalent file, or
        the mask derived from the image path when ``mask`` is None (None if underivable)."""
        ...


def _is_path(token: str) -> bool:
    return "/" in token or "\\" in token or Path(token).suffix.lower() in IMAGE_EXTS


def find_split_file(value: str, cfg: DataConfig, key: str) -> Path:
    """The split file named by config key ``key``: a shipped list (``shipped:NAME/PART``), the
    path as given, else under ``data.root``."""
    if value.startswith(standard_splits.SCHEME):
        return standard_splits.resolve(value, key)
    p = Path(value).expanduser()
    tried = [p]
    if not p.is_absolute() and cfg.root:
        tried.append(Path(cfg.root).expanduser() / p)
    for t in tried:
        if t.is_file():
            return t
    raise DataError(
        f"{key}={value}: file not found (looked at {', '.join(str(t) for t in tried)}). "
        f"A split file lists {FORMATS}"
    )


def read_split(value: str, cfg: DataConfig, layout: Layout, labeled: bool, key: str) -> EntryTable:
    """Entries of the split file ``value`` (config key ``key``), see the module docstring.

    The file is read as a stream, line by line, into a compact table. Each line of a labelled
    (or validation) file is looked up on disk. An unlabelled file's image paths are looked up
    for its first ``PROBE_LINES`` path lines only: when all of them were found under one base
    folder, every further path is taken to be under it, without touching the disk (a file that
    is not there is reported when it is read: ``data.skip_bad``).
    """
    path = find_split_file(value, cfg, key)
    inside = _inside_root(cfg, layout)
    # where relative paths may start: the dataset directory, data.root, the working directory
    bases = [layout.root]
    for extra in (Path(cfg.root).expanduser() if cfg.root else None, Path()):
        if extra is not None and extra not in bases:
            bases.append(extra)

    def resolve(token: str) -> Path:
        p = Path(token).expanduser()
        if p.is_absolute():
            return p
        return next((b / p for b in bases if (b / p).exists()), bases[0] / p)

    def lookup(tokens: list[str], where: str) -> Entry:
        if not _is_path(tokens[0]):
            entry = layout.from_id(tokens[0], labeled)
        else:
            image = resolve(tokens[0])
            if not labeled:
                entry = Entry(image, None, image.stem)
            else:
                entry = layout.from_paths(image, resolve(tokens[1]) if len(tokens) == 2 else None)
            if not image.is_file():  # e.g. a physically split folder: look the name up
                alt = layout.from_id(image.stem, labeled)
                if alt.image.is_file():
                    entry = alt
        if not labeled:
            entry = Entry(entry.image, None, entry.name)
        elif entry.mask is None:
            raise DataError(
                f"{where}: cannot tell where the mask of {tokens[0]} is; give 'image mask' pairs"
            )
        return entry

    table = TableBuilder()
    probes: list[tuple[str, Entry]] = []  # (path token, entry) of the first path lines
    base: str | None = None  # learned: every further relative image path starts here
    # shipped lists are gzip-compressed; gzip.open reads them as the same text stream
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) > 2:
                raise DataError(
                    f"{path}, line {lineno}: {len(tokens)} fields; a split file lists {FORMATS}"
                )
            token = tokens[0]
            if base is not None and _is_path(token) and not token.startswith("~"):
                image = token if os.path.isabs(token) else base + token
                inside(image, path, lineno, token)
                table.add(image, None, file_stem(token.rpartition("/")[2]))
                continue
            entry = lookup(tokens, f"{path}, line {lineno}")
            inside(entry.image, path, lineno, tokens[0])
            if entry.mask is not None:
                inside(entry.mask, path, lineno, tokens[-1])
            table.add(entry.image, entry.mask, entry.name)
            if not labeled and _is_path(token) and len(probes) < PROBE_LINES:
                probes.append((token, entry))
                if len(probes) == PROBE_LINES:
                    base = _common_base(probes, bases)
    if not len(table):
        raise DataError(f"{key}={value}: {path} lists no images. A split file lists {FORMATS}")
    return table.build()


def _inside_root(cfg: DataConfig, layout: Layout):
    """A check ``(file, split file, line number, entry)`` that raises ``DataError`` when
    ``file`` does not lie under ``data.root`` (the dataset directory when there is none), by
    its path with ``..`` resolved and no link followed; does nothing with
    ``data.allow_outside_root``."""
    root = Path(cfg.root).expanduser() if cfg.root else layout.root
    top = os.path.normpath(os.path.abspath(root))
    prefix = top if top.endswith(os.sep) else top + os.sep

    def check(file: Path | str, split: Path, lineno: int, token: str) -> None:
        if cfg.allow_outside_root:
            return
        full = os.path.normpath(os.path.abspath(file))
        if full != top and not full.startswith(prefix):
            raise DataError(
                f"{split}, line {lineno}: {token} leads outside data.root ({top}), to {full}. "
                "A split file lists files of the dataset: fix the entry, or, for your own list "
                "of images kept elsewhere, set data.allow_outside_root=true"
            )

    return check


def _common_base(probes: list[tuple[str, Entry]], bases: list[Path]) -> str | None:
    """The first of ``bases`` under which every probed path token was found, as it was found
    (``base / token``, named by its stem), with a trailing separator; None if there is none."""
    candidates = [str(b) + os.sep for b in bases]
    for token, entry in probes:
        if entry.name != Path(token).stem:
            return None
        image = os.path.normpath(entry.image)
        if os.path.isabs(token):
            if image != os.path.normpath(token):
                return None
            continue
        candidates = [c for c in candidates if os.path.normpath(c + token) == image]
    return candidates[0] if candidates else None


class FolderSplitLayout(Layout, Protocol):
    """A layout with one image folder per split (Cityscapes ``train``/``val``, ADE20K
    ``training``/``validation``)."""

    def scan(self, split: str, labeled: bool) -> list[Entry]:
        """Every image of the folder of ``split``, with its mask when ``labeled``."""
        ...


Part = tuple[Sequence[Entry], str]  # entries and where they came from (for messages)


def folder_split_parts(
    cfg: DataConfig, layout: FolderSplitLayout, train: str, val: str, images: str
) -> tuple[Part, Part, Part]:
    """(labelled, unlabelled, validation) entries of a ``FolderSplitLayout`` dataset.

    Split files win when given. Otherwise every ``train`` image is labelled and none is
    unlabelled, or, with only ``data.labeled`` given, the other ``train`` images are the
    unlabelled set; validation is every ``val`` image. ``images`` names the image folder in
    the origins (``leftImg8bit``).
    """
    if cfg.labeled:
        labeled = read_split(cfg.labeled, cfg, layout, True, "data.labeled"), cfg.labeled
    else:
        labeled = layout.scan(train, labeled=True), f"{images}/{train} (all)"
    if cfg.unlabeled:
        unlabeled = read_split(cfg.unlabeled, cfg, layout, False, "data.unlabeled"), cfg.unlabeled
    elif cfg.labeled:
        rest = without_masks(exclude(layout.scan(train, labeled=False), labeled[0]))
        unlabeled = rest, f"{images}/{train} minus labelled"
    else:
        unlabeled = [], f"none (all {train} images are labelled)"
    if cfg.val:
        validation = read_split(cfg.val, cfg, layout, True, "data.val"), cfg.val
    else:
        validation = layout.scan(val, labeled=True), f"{images}/{val}"
    return labeled, unlabeled, validation


def draw_split(
    candidates: Sequence[Entry], labeled: int | None, fraction: float | None, seed: int
) -> tuple[list[Entry], list[Entry]]:
    """Split ``candidates`` into (labelled, rest) reproducibly.

    ``labeled`` images, or ``round(fraction * len(candidates))``. The candidates are sorted by
    name and permuted with ``seed``; the labelled set is a prefix of that permutation, so with
    one seed a smaller labelled set is a subset of a larger one. Both outputs are sorted by name.
    """
    if (labeled is None) == (fraction is None):
        raise DataError("give exactly one of a labelled count or a fraction")
    n = len(candidates)
    count = labeled if labeled is not None else round(fraction * n)
    if fraction is not None and not 0 < fraction <= 1:
        raise DataError(f"the fraction must be in (0, 1], got {fraction}")
    if not 0 < count <= n:
        if fraction is not None:
            raise DataError(
                f"--fraction {fraction} of {n} candidates is {fraction * n:g} images, which "
                f"rounds to {count}: cannot draw {count} labelled images. Give a larger "
                f"fraction (at least {0.5 / n:.3g}) or a count with --labeled"
                if n
                else f"cannot draw labelled images from {n} candidates"
            )
        raise DataError(f"cannot draw {count} labelled images from {n} candidates")
    ordered = sorted(candidates, key=lambda e: e.name)
    perm = np.random.default_rng(seed).permutation(n)
    chosen = set(perm[:count].tolist())
    lab = [e for i, e in enumerate(ordered) if i in chosen]
    rest = [e for i, e in enumerate(ordered) if i not in chosen]
    return lab, rest


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def write_split(path: Path, entries: Iterable[Entry], root: Path, with_masks: bool) -> None:
    """Write ``entries`` one per line, ``image mask`` or ``image``, relative to ``root``."""
    lines = []
    for e in entries:
        if with_masks and e.mask is not None:
            lines.append(f"{_rel(e.image, root)} {_rel(e.mask, root)}")
        else:
            lines.append(_rel(e.image, root))
    write_text(path, "\n".join(lines) + "\n")
