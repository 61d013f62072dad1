"""Paired image + mask transforms, built from ``torchvision.transforms.v2``.

v2 dispatches on tv_tensors: an ``Image`` is resized bilinearly and padded with 0, a ``Mask``
with nearest neighbour and padded with ``IGNORE_INDEX``, so image and mask stay aligned and
label values are never interpolated.

- weak view: random rescale, crop (padded where the image is smaller), horizontal flip. Two
  paddings: at a random offset, image 0 (black) before normalisation (``v2.RandomCrop``), or
  ``official_pad``: mmseg's (Dual Teacher ``faithful``), the crop never larger than the image
  and, after normalisation, ``pad_bottom_right`` with image 0 (the mean colour);
- strong view: per-image colour jitter, greyscale and blur on the weak view, before
  normalisation (Dual Teacher ``clean``: ``docs/method.md`` F4);
- ``normalize``: uint8 -> float and (x - mean) / std.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dualteacher.config import IGNORE_INDEX, DataConfig, StrongAugConfig, StrongColour


class RandomScale(v2.Transform):
    """Rescale by a factor drawn uniformly from ``scale_range``.

    The factor applies to the image's own short side, or to ``base_size`` when given (mmseg's
    fixed-scale convention: every image first goes to short side ``base_size``).
    """

    def __init__(self, scale_range: tuple[float, float], base_size: int | None = None):
        super().__init__()
        self.scale_range = scale_range
        self.base_size = base_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        factor = float(torch.empty(1).uniform_(*self.scale_range))
        if self.base_size is not None:
            factor *= self.base_size / min(h, w)
        return {"size": [max(1, round(h * factor)), max(1, round(w * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


class RandomCropWithin(v2.Transform):
    """Random crop of ``min(size, side)`` along each side: never pads (mmseg's ``RandomCrop``
    without ``cat_max_ratio``); ``pad_bottom_right`` then brings the crop to ``size``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size, h), min(self.size, w)
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def weak_transform(cfg: DataConfig, official_pad: bool = False) -> v2.Compose:
    """Random rescale, crop to ``cfg.crop_size``, flip. Where the image is smaller than the
    crop: padding at a random offset (image 0, mask ignore), or with ``official_pad`` no
    padding here (``pad_bottom_right`` after normalisation)."""
    ops: list[v2.Transform] = []
    if cfg.scale_range != (1.0, 1.0) or cfg.base_size is not None:
        ops.append(RandomScale(tuple(cfg.scale_range), cfg.base_size))
    if official_pad:
        ops.append(RandomCropWithin(cfg.crop_size))
    else:
        ops.append(
            v2.RandomCrop(
                cfg.crop_size,
                pad_if_needed=True,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX},
            )
        )
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(ops)


def pad_bottom_right(x: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Pad ``(..., h, w)`` to ``(..., max(h, size), max(w, size))`` on the bottom and right with
    ``fill`` (mmseg's ``Pad``: 0 for a normalised image, ``IGNORE_INDEX`` for a mask)."""
    ph, pw = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
    return torch.nn.functional.pad(x, (0, pw, 0, ph), value=fill) if ph or pw else x


# data.strong.colour=auto: colour_separability at or above this is a colour cue. Chosen on the
# gain suite's tuning draws: 0.00-0.18 where colour is random or absent (gray, shapes, ten
# textures, scratches), 0.57-0.61 where classes have their colours (demo, small objects).
COLOUR_CUE = 0.35
UNIMATCH_HUE, UNIMATCH_GRAYSCALE_P = 0.25, 0.2  # UniMatch's strong view (the fields' defaults)


def colour_is_cue(separability: float) -> bool:
    """Whether a labelled set's ``colour_separability`` makes colour a class cue."""
    return separability >= COLOUR_CUE


def strong_for_colour(cfg: StrongAugConfig, separability: float) -> StrongAugConfig:
    """The strong view ``data.strong.colour=auto`` resolves to, from the labelled set's
    ``colour_separability``: where colour is a class cue, keep it (hue 0, no greyscale), since
    a teacher's label for a recoloured pixel would teach the student to ignore that cue; where
    it is not, vary it as UniMatch does, so that the student learns not to rely on colour."""
    if colour_is_cue(separability):
        return replace(cfg, colour=StrongColour.fixed, hue=0.0, grayscale_p=0.0)
    return replace(
        cfg, colour=StrongColour.fixed, hue=UNIMATCH_HUE, grayscale_p=UNIMATCH_GRAYSCALE_P
    )


def strong_transform(cfg: StrongAugConfig) -> v2.Compose:
    """Photometric strong view of one uint8 image (UniMatch's recipe by default)."""
    kernel = 2 * math.ceil(3 * cfg.blur_sigma[1]) + 1  # covers +-3 sigma of the widest blur
    return v2.Compose(
        [
            v2.RandomApply(
                [v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                p=cfg.jitter_p,
            ),
            v2.RandomGrayscale(cfg.grayscale_p),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma))], p=cfg.blur_p),
        ]
    )


def normalize(cfg: DataConfig) -> v2.Compose:
    """uint8 image -> float32 normalised with ``cfg.mean`` / ``cfg.std``."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    )


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of ``normalize`` for a float ``(..., 3, H, W)`` tensor, back to [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * s + m
