"""Sources of (image, mask) pairs and the training / evaluation datasets built on them.

A *source* knows where samples are and how to read one; it applies no augmentation. The
training datasets wrap a source with the weak / strong views, the evaluation dataset returns
whole images. Every dataset (demo, VOC, Cityscapes, ADE20K, the user's folders) is a source.

Sample keys produced for the training step (``_x`` labelled, ``_u`` unlabelled):
- labelled:   ``image`` (3, h, w) float normalised, ``mask`` (h, w) int64 with 255 = ignore;
- unlabelled: ``image`` weak view, ``image_s`` strong view of the same crop (when asked for;
  ``image_s2``, ``image_s3``, ... are further independent strong views, see ``strong_key``),
  ``ignore`` (h, w) bool, True on padding added by the crop (no image content there).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from dualteacher.config import IGNORE_INDEX, DataConfig
from dualteacher.data.transforms import (
    normalize,
    pad_bottom_right,
    strong_transform,
    weak_transform,
)
from dualteacher.errors import BadSampleError, BadValidationFile, DataError

SKIPPED_KEY = "_skipped"  # (path, reason) of the bad files a training sample replaced
MAX_REPLACEMENTS = 16  # bad samples in a row before ``data.skip_bad`` gives up


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) integer class ids, IGNORE_INDEX = ignore; None: unlabelled
    name: str  # stable id, e.g. the file stem
    # (kind, text) of what reading did beyond plain 8-bit RGB: ("depth", "16-bit grey PNG,
    # values 0..4095: stretched to 0..255"), ("orientation", "EXIF orientation 6: ..."); see
    # ``data.files.image_notes``. `dualteacher check` reports them.
    notes: tuple[tuple[str, str], ...] = ()


class SegSource:
    """Base class: ``len(source)`` samples, ``source.load(i)`` reads one."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError


class ArraySource(SegSource):
    """Samples held in memory: ``images`` (N, H, W, 3) uint8, ``masks`` (N, H, W) or None.

    Sample ``i`` is named ``<prefix>_<ids[i]>`` (``ids`` default ``0..N-1``), so a subset
    (``take``) keeps the names its samples had in the whole set."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        prefix: str = "img",
        ids: np.ndarray | None = None,
    ):
        self.images, self.masks, self.prefix = images, masks, prefix
        self.ids = np.arange(len(images)) if ids is None else np.asarray(ids)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"{self.prefix}_{int(self.ids[index]):05d}"

    def load(self, index: int) -> Sample:
        mask = None if self.masks is None else self.masks[index]
        return Sample(self.images[index], mask, self.name(index))

    def take(self, indices: Sequence[int]) -> ArraySource:
        idx = np.asarray(indices, np.int64)
        masks = None if self.masks is None else self.masks[idx]
        return ArraySource(self.images[idx], masks, self.prefix, self.ids[idx])


@dataclass
class DataBundle:
    """What a dataset builder returns: the three sets and the label space."""

    labeled: SegSource
    unlabeled: SegSource | None
    val: SegSource
    classes: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX
    # data.select's selection split (picks best.pt), None when off; its images are in neither
    # training set (``data.select.hold_out_select``)
    select: SegSource | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@contextmanager
def seeded(seed: int):
    """Run a block with torch's and Python's global RNGs seeded, then restore them.

    torchvision's v2 transforms draw from the global RNGs; seeding per sample makes every
    augmentation a pure function of (run seed, draw index), whatever the number of workers,
    which is what makes resumed and deterministic runs exact.
    """
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def load_or_replace(
    source: SegSource, index: int, seed: int, skip_bad: bool
) -> tuple[Sample, list[tuple[str, str]]]:
    """``source.load(index)``; with ``skip_bad`` a sample that raises ``BadSampleError`` is
    replaced by another index drawn from ``(seed, attempt)``: the same draw always gets the
    same replacement, so resumed and repeated runs see the same data. Also returns the
    ``(path, reason)`` of every bad file met."""
    skipped: list[tuple[str, str]] = []
    n = len(source)
    for attempt in range(MAX_REPLACEMENTS + 1):
        try:
            return source.load(index), skipped
        except BadSampleError as e:
            if not skip_bad:
                raise
            skipped.append((str(e.path), e.reason or str(e)))
            if n < 2:
                break
            g = torch.Generator().manual_seed((seed + 7919 * (attempt + 1)) % 2**63)
            index = (index + 1 + int(torch.randint(n - 1, (1,), generator=g))) % n
    raise DataError(
        f"data.skip_bad=true, but {len(skipped)} samples in a row could not be read (the last: "
        f"{skipped[-1][0]}: {skipped[-1][1]}): most of this set seems unreadable. Run "
        "`dualteacher check CONFIG` to list the bad files."
    )


def _to_tv(sample: Sample) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1))
    if sample.mask is None:  # unlabelled: an all-zero mask marks where image content is
        mask = torch.zeros(sample.image.shape[:2], dtype=torch.uint8)
    else:
        mask = torch.from_numpy(np.ascontiguousarray(sample.mask)).to(torch.uint8)
    return image, tv_tensors.Mask(mask)


class LabeledTrainSet(Dataset):
    """Weak view of labelled samples. Indexed by ``(index, seed)`` pairs from the sampler.

    ``official_pad``: mmseg's padding (``data.transforms``), bottom/right after normalisation.
    """

    def __init__(self, source: SegSource, cfg: DataConfig, official_pad: bool = False):
        self.source = source
        self.weak = weak_transform(cfg, official_pad)
        self.norm = normalize(cfg)
        self.crop_size = cfg.crop_size
        self.skip_bad = cfg.skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        sample, skipped = load_or_replace(self.source, index, seed, self.skip_bad)
        if sample.mask is None:
            raise ValueError(f"labelled sample {sample.name} has no mask")
        image, mask = _to_tv(sample)
        with seeded(seed):
            image, mask = self.weak(image, mask)
        out = {
            "image": pad_bottom_right(
                self.norm(image).as_subclass(torch.Tensor), self.crop_size, 0
            ),
            "mask": pad_bottom_right(
                mask.as_subclass(torch.Tensor).long(), self.crop_size, IGNORE_INDEX
            ),
        }
        return _with_skipped(out, skipped)


def _with_skipped(out: dict, skipped: list) -> dict:
    if skipped:
        out[SKIPPED_KEY] = skipped  # taken out again by the loaders' collate function
    return out


def strong_key(i: int) -> str:
    """Batch key of the ``i``-th strong view (from 0): ``image_s``, ``image_s2``, ..."""
    return "image_s" if i == 0 else f"image_s{i + 1}"


class UnlabeledTrainSet(Dataset):
    """Weak view, optional per-image strong views, and the padding mask of unlabelled samples.

    ``num_strong`` strong views (UniMatch uses two) are independent photometric augmentations
    of the same weak crop, so they share its geometry and padding mask. They are drawn one
    after another from the sample's seed: the first strong view does not depend on how many
    are asked for.
    """

    def __init__(
        self,
        source: SegSource,
        cfg: DataConfig,
        with_strong: bool,
        num_strong: int = 1,
        official_pad: bool = False,
    ):
        self.source = source
        self.weak = weak_transform(cfg, official_pad)
        self.crop_size = cfg.crop_size
        self.strong = strong_transform(cfg.strong) if with_strong else None
        self.num_strong = num_strong if with_strong else 0
        self.norm = normalize(cfg)
        self.skip_bad = cfg.skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        sample, skipped = load_or_replace(self.source, index, seed, self.skip_bad)
        sample = Sample(sample.image, None, sample.name)  # never read an unlabelled mask
        image, pad = _to_tv(sample)
        with seeded(seed):
            image, pad = self.weak(image, pad)
            views = {"image": self.norm(image)}
            for i in range(self.num_strong):
                views[strong_key(i)] = self.norm(self.strong(image))
        # with official_pad the crop may be smaller than crop_size: pad it (a no-op otherwise)
        out = {
            k: pad_bottom_right(v.as_subclass(torch.Tensor), self.crop_size, 0)
            for k, v in views.items()
        }
        pad = pad_bottom_right(pad.as_subclass(torch.Tensor), self.crop_size, IGNORE_INDEX)
        out["ignore"] = pad == IGNORE_INDEX
        return _with_skipped(out, skipped)


class EvalSet(Dataset):
    """Whole images for evaluation: ``image`` (3, H, W) normalised, ``mask`` (H, W), ``name``."""

    def __init__(self, source: SegSource, cfg: DataConfig):
        self.source = source
        self.norm = normalize(cfg)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        try:
            sample = self.source.load(index)
        except BadSampleError as e:  # never skipped: the message must not offer skip_bad
            raise BadValidationFile(e.path, e.reason or str(e), e.fix) from None
        image, mask = _to_tv(sample)
        out = {"image": self.norm(image).as_subclass(torch.Tensor), "name": sample.name}
        if sample.mask is not None:
            out["mask"] = mask.as_subclass(torch.Tensor).long()
        return out


class SubsetSource(SegSource):
    """A source restricted to ``indices`` (in that order)."""

    def __init__(self, source: SegSource, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Sample:
        return self.source.load(self.indices[index])
