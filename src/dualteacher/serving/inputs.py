"""Images in, batches out: the front half of every serving command.

- ``collect_inputs``: image files, folders (searched recursively) and globs -> images whose
  output names do not collide, leaving out the outputs of an earlier ``predict`` (its folder
  when inside an input folder, and every file its manifest ``MANIFEST`` lists);
- ``read_image``: an image read as training reads it (``data.files.decode_image``);
- ``ImageSet``: files or a dataset's unlabelled source as a ``Dataset`` of images;
- ``logit_batches``: an ``ImageSet`` through a ``Segmenter`` in batches of one size
  (``suggest`` and ``pseudolabel``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from dualteacher.config import MAX_IMAGE_PIXELS
from dualteacher.data.files import IMAGE_EXTS, decode_image
from dualteacher.errors import BadSampleError, WriteError
from dualteacher.outputs import check_inside_out, default_fix, describe_os_error
from dualteacher.serving.segmenter import Segmenter

IMAGE_EXTENSIONS = set(IMAGE_EXTS)  # the types a dataset folder reads, the same list
_GLOB_CHARS = set("*?[")


OUTPUT_SUFFIXES = (".png", "_color.png", "_overlay.png")  # the files of one input
MANIFEST = ".dualteacher_predict"  # in DIR: the outputs written there, one relative path a line
# the same list, written by ``suggest`` and ``pseudolabel``: every serving command's outputs
# (present or earlier) are never its inputs
OUTPUTS_MANIFEST = ".dualteacher_outputs"
MANIFESTS = (MANIFEST, OUTPUTS_MANIFEST)


@dataclass
class _Input:
    path: Path
    name: str  # output name without extension, may contain sub-folders ("sub/img")


def _previous_outputs(folder: Path) -> set[Path]:
    """Files a serving command (predict, suggest, pseudolabel) listed in ``folder``'s
    manifests (resolved paths)."""
    found: set[Path] = set()
    for name in MANIFESTS:
        manifest = folder / name
        if manifest.is_file():
            lines = manifest.read_text(errors="replace").splitlines()
            found |= {(folder / ln).resolve() for ln in lines if ln.strip()}
    return found


def record_outputs(manifest: Path, paths: Sequence[Path]) -> None:
    """List ``paths`` in the output folder's manifest, so that a later serving command whose
    input folder holds this one leaves them out."""
    lines = "".join(Path(p).relative_to(manifest.parent).as_posix() + "\n" for p in paths)
    check_inside_out(manifest)  # appended to in place: a link must not lead elsewhere
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(manifest, "a") as f:
            f.write(lines)
    except OSError as e:
        raise WriteError(
            f"could not write {manifest}: {describe_os_error(e)}. {default_fix(manifest)}."
        ) from None


def _walk(folder: Path, out_dir: Path | None) -> tuple[list[Path], list[Path]]:
    """(files, earlier predict outputs) under ``folder``: the output folder ``out_dir``, when
    it lies inside, is left out whole, and so is every file an earlier predict listed in a
    manifest of a folder on the way."""
    out_real = out_dir.resolve() if out_dir is not None else None
    files, previous = [], []
    known: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames.sort()
        real = here.resolve()
        if out_real is not None and real == out_real and real != folder.resolve():
            previous += sorted(here.rglob("*.png"))
            dirnames[:] = []
            continue
        known |= _previous_outputs(here)
        for name in sorted(filenames):
            f = here / name
            if name in MANIFESTS:
                continue
            (previous if f.resolve() in known else files).append(f)
    return files, previous


def _output_keys(name: str) -> set[str]:
    """The files input ``name`` writes, in a form that also matches on case-insensitive disks."""
    return {(name + sfx).casefold() for sfx in OUTPUT_SUFFIXES}


def collect_inputs(
    inputs: list[str], out_dir: str | Path | None = None, keep_extension: bool = False
) -> tuple[list[_Input], list[tuple[str, str]], list[Path], list[Path]]:
    """Expand files, folders and globs into a list of images whose outputs do not collide.

    Returns ``(images, failed, skipped, previous)``: ``failed`` holds inputs that match
    nothing, ``skipped`` the non-image files found inside folders, ``previous`` the outputs of
    earlier serving runs found there (``out_dir`` itself when inside an input folder, and files
    listed in a manifest), which are left out. ``keep_extension``: inputs whose names differ
    only by their extension (``x.jpg``, ``x.png``) are all named with it (``x.jpg``, ``x.png``)
    instead of ``x``, ``x_2``.
    """
    out = Path(out_dir) if out_dir is not None else None
    found: list[_Input] = []
    failed: list[tuple[str, str]] = []
    skipped: list[Path] = []
    previous: list[Path] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            files, old = _walk(p, out)
            previous += old
            for f in files:
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(_Input(f, f.relative_to(p).with_suffix("").as_posix()))
                else:
                    skipped.append(f)
            if not files and not old:
                failed.append((arg, "folder holds no files"))
        elif p.is_file():
            found.append(_Input(p, p.stem))  # given by name: read whatever its extension
        elif _GLOB_CHARS & set(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                failed.append((arg, "no file matches this pattern"))
            known = set().union(*(_previous_outputs(d) for d in {m.parent for m in matches}))
            out_real = out.resolve() if out is not None else None
            for m in matches:
                real = m.resolve()
                if real in known or (out_real is not None and real.is_relative_to(out_real)):
                    previous.append(m)
                else:
                    found.append(_Input(m, m.stem))
        else:
            failed.append((arg, "no such file or folder"))
    # The same file twice is predicted once. Names whose outputs would collide (two files
    # called "img", or "z" and "z_overlay": z_overlay.png) get _2, _3, ...
    if keep_extension:
        stems: dict[str, set[Path]] = {}
        for item in found:
            stems.setdefault(item.name.casefold(), set()).add(item.path.resolve())
        found = [
            _Input(it.path, it.name + it.path.suffix)
            if len(stems[it.name.casefold()]) > 1 and it.path.suffix
            else it
            for it in found
        ]
    unique: list[_Input] = []
    seen_paths: set[Path] = set()
    taken: set[str] = set()
    for item in found:
        real = item.path.resolve()
        if real in seen_paths:
            continue
        seen_paths.add(real)
        name, k = item.name, 1
        while _output_keys(name) & taken:
            k += 1
            name = f"{item.name}_{k}"
        taken |= _output_keys(name)
        unique.append(_Input(item.path, name))
    return unique, failed, skipped, previous


def read_image(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB, read as training reads images (``data.files.decode_image``: EXIF
    orientation applied, deep images scaled to 8 bits; more than ``max_pixels`` pixels
    refused). Raises ``ValueError`` with the reason."""
    try:
        return decode_image(path, max_pixels).array
    except BadSampleError as e:  # the fix of a damaged file speaks of datasets: left out
        unreadable = e.reason.startswith("cannot read")
        raise ValueError(
            e.reason + (f". Fix: {e.fix}" if e.fix and not unreadable else "")
        ) from None


class ImageFiles(Dataset):
    """``collect_inputs``'s images, read in DataLoader workers (``predict``)."""

    def __init__(self, items: list[_Input], max_pixels: int | None):
        self.items, self.max_pixels = items, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            return {"item": item, "image": read_image(item.path, self.max_pixels)}
        except ValueError as e:
            return {"item": item, "error": str(e)}


@dataclass(frozen=True)
class ImageRef:
    name: str  # unique name, "/"-separated, without extension ("sub/img", "unlabeled_00012")
    path: Path | None  # the file; None for generated images (the demo dataset)


class ImageSet(Dataset):
    """Images to predict: files (``collect_inputs``) or a dataset's unlabelled source.

    ``self[i]`` is ``{"index": i, "image": (H, W, 3) uint8}``, or ``{"index": i, "error":
    reason}`` for a file that cannot be read.
    """

    def __init__(self, refs: list[ImageRef], source=None):
        self.refs, self.source = refs, source
        self.previous: list[Path] = []  # earlier outputs left out of the inputs
        # files given by name: data.max_image_pixels of the command's config (logit_batches)
        self.max_pixels: int | None = MAX_IMAGE_PIXELS

    @classmethod
    def from_inputs(
        cls, inputs: Sequence[str], out_dir: str | Path | None = None, keep_extension=False
    ) -> tuple[ImageSet, list, list]:
        """Files, folders and globs as ``predict`` takes them -> (images, failed, skipped),
        leaving out ``out_dir`` and earlier outputs as ``predict`` does (``collect_inputs``;
        the left-out files are ``images.previous``)."""
        items, failed, skipped, previous = collect_inputs(list(inputs), out_dir, keep_extension)
        image_set = cls([ImageRef(it.name, it.path) for it in items])
        image_set.previous = previous
        return image_set, failed, skipped

    @classmethod
    def from_source(cls, source) -> ImageSet:
        """Every sample of a ``SegSource`` (a dataset's unlabelled set)."""
        entries = getattr(source, "entries", None)  # files on disk: names without reading
        if entries is not None:
            refs = [ImageRef(e.name, e.image) for e in entries]
        else:  # generated in memory: cheap to load
            refs = [ImageRef(source.load(i).name, None) for i in range(len(source))]
        return cls(refs, source)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict:
        try:
            if self.source is not None:
                image = self.source.load(i).image
            else:
                image = read_image(self.refs[i].path, self.max_pixels)
        except BadSampleError as e:
            return {"index": i, "error": e.reason or str(e)}
        except ValueError as e:  # read_image: the reason
            return {"index": i, "error": str(e)}
        return {"index": i, "image": np.ascontiguousarray(image)}

    def where(self, i: int) -> str:
        ref = self.refs[i]
        return str(ref.path) if ref.path is not None else ref.name


@dataclass
class LogitBatch:
    indices: list[int]  # into the ImageSet
    images: list[np.ndarray]  # (H, W, 3) uint8 each, all of one size
    logits: dict[str, torch.Tensor]  # model name -> (B, K, H, W) float32, on the device


def logit_batches(
    segmenter: Segmenter,
    images: ImageSet,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    failed: list[tuple[str, str]] | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> Iterator[LogitBatch]:
    """Predict ``images`` (all, or ``indices``) with every model of ``segmenter``, batching
    consecutive images of one size. Unreadable images are appended to ``failed`` as
    ``(path, reason)`` and left out. The front half that ``suggest`` and ``pseudolabel``
    share: checkpoint -> images -> logit batches."""
    cfg = segmenter.cfg
    images.max_pixels = cfg.data.max_image_pixels  # the user's limit (never a stored config's)
    indices = list(range(len(images))) if indices is None else list(indices)
    loader = DataLoader(
        Subset(images, indices),
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=workers,
        collate_fn=list,
    )
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not progress)
    for chunk in loader:
        groups: dict[tuple[int, int], list[dict]] = {}
        for s in chunk:
            if "error" in s:
                if failed is not None:
                    failed.append((images.where(s["index"]), s["error"]))
                bar.update(1)
            else:
                groups.setdefault(s["image"].shape[:2], []).append(s)
        for group in groups.values():
            x = segmenter.to_input([s["image"] for s in group])  # normalised as in training
            logits = {n: segmenter.logits(x, n) for n in segmenter.models}
            yield LogitBatch([s["index"] for s in group], [s["image"] for s in group], logits)
            bar.update(len(group))
    bar.close()
