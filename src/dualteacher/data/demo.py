"""The built-in demo dataset: texture objects on photo backgrounds, made from a seed.

Every image is a crop of one of scikit-image's bundled colour photos (astronaut, coffee,
chelsea, rocket, ...) with 1-3 objects pasted on it. Each object is a random shape (ellipse,
star polygon or smooth blob) filled with one of four real grayscale textures that scikit-image
ships (brick, grass, gravel, printed text), rotated, rescaled, contrast-varied and tinted. The
class of a pixel is the texture it shows: 0 background, 1 brick, 2 grass, 3 gravel, 4 text.
Each class has a base colour that every object varies, so colour helps but does not decide:
a model must also tell the textures apart under rotation, scale and tint changes and tell them
from the photo behind. A few labelled images cover little of that variation; the unlabelled
images cover the rest.

Nothing is downloaded: the photos and textures are inside the scikit-image wheel. The dataset
is a pure function of ``DemoDataConfig`` (sizes and seed); labelled, unlabelled and validation
images come from independent random streams, so the three sets are disjoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw
from skimage.transform import AffineTransform, warp

from dualteacher.config import DemoDataConfig
from dualteacher.errors import DataError

CLASSES = ["background", "brick", "grass", "gravel", "text"]
PALETTE = [(0, 0, 0), (200, 60, 40), (60, 180, 60), (150, 150, 160), (240, 220, 60)]
_TEXTURES = ["brick", "grass", "gravel", "text"]  # class i + 1
_BACKGROUNDS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
]
# Base colour of each texture class (RGB in [0, 1]); every object varies it (brightness 0.6-1.0,
# +-_TINT_JITTER per channel), so colour is a strong but not a sufficient class cue: ochre
# gravel and reddish brick overlap, and the photos behind contain all of these colours.
_CLASS_TINT = [(0.9, 0.45, 0.3), (0.45, 0.85, 0.35), (0.7, 0.7, 0.75), (0.95, 0.9, 0.4)]
_TINT_JITTER = 0.15
_RADIUS = (0.2, 0.38)  # object mean radius, as a fraction of the image side
_STREAMS = {"labeled": 1, "unlabeled": 2, "val": 3}


@functools.cache
def _texture(name: str) -> np.ndarray:
    """(H, W) float32 in [0, 1], contrast-normalised so brightness is not a class cue."""
    if name == "text":
        img = skdata.page().astype(np.float32)  # printed page, 191 x 384
        img = np.kron(img, np.ones((2, 2), np.float32))  # 2x so crops fit at large scales
    else:
        img = getattr(skdata, name)().astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    return np.clip(0.5 + 0.18 * img, 0.0, 1.0)


@functools.cache
def _background(name: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3].astype(np.float32) / 255.0


def _warp_crop(src: np.ndarray, size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A ``size`` x ``size`` view of ``src`` under a random rotation, ``scale`` and position."""
    h, w = src.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    # Output pixel (c, r) maps to a source point around a random centre, `scale` source
    # pixels per output pixel; the margin keeps the rotated window inside the source.
    half = size * scale * 0.75
    cy = rng.uniform(min(half, h / 2), max(h - half, h / 2))
    cx = rng.uniform(min(half, w / 2), max(w - half, w / 2))
    tf = (
        AffineTransform(translation=(-size / 2, -size / 2))
        + AffineTransform(scale=scale, rotation=angle)
        + AffineTransform(translation=(cx, cy))
    )
    return warp(src, tf, output_shape=(size, size), order=1, mode="reflect").astype(np.float32)


def _shape_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool mask of one object: an ellipse, a star polygon or a smooth blob."""
    r = rng.uniform(*_RADIUS) * size  # mean radius
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    mask = np.zeros((size, size), bool)
    kind = rng.integers(3)
    if kind == 0:
        rr, cc = draw.ellipse(
            cy,
            cx,
            r * rng.uniform(0.6, 1.3),
            r * rng.uniform(0.6, 1.3),
            (size, size),
            rotation=rng.uniform(0, np.pi),
        )
        mask[rr, cc] = True
    elif kind == 1:
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.4, n)
        rr, cc = draw.polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), (size, size))
        mask[rr, cc] = True
    else:
        yy, xx = np.mgrid[:size, :size]
        dist = np.hypot(yy - cy, xx - cx) / r
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 10)
        mask = dist + 1.5 * noise / (noise.std() + 1e-6) * 0.25 < 1.0
    if mask.sum() < 0.01 * size * size:  # degenerate draw: fall back to a disc
        mask = np.hypot(*(np.mgrid[:size, :size] - np.array([cy, cx])[:, None, None])) < r
    return mask


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One demo image: ``(size, size, 3)`` uint8 and its ``(size, size)`` uint8 class mask."""
    bg = _background(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))])
    img = _warp_crop(bg, size, rng, scale=rng.uniform(0.6, 3.0))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(len(_TEXTURES)))
        tex = _warp_crop(_texture(_TEXTURES[cls]), size, rng, scale=rng.uniform(0.5, 1.5))
        # The class's base colour, varied per object (see _CLASS_TINT).
        base = np.array(_CLASS_TINT[cls]) * rng.uniform(0.6, 1.0)
        tint = np.clip(base + rng.uniform(-_TINT_JITTER, _TINT_JITTER, 3), 0.05, 1.0)
        contrast = rng.uniform(0.8, 1.3)
        obj = np.clip(0.5 + contrast * (tex[..., None] - 0.5), 0, 1) * tint.astype(
            np.float32
        ) + rng.uniform(0, 0.3)
        m = _shape_mask(size, rng)
        img[m] = np.clip(obj[m], 0, 1)
        mask[m] = cls + 1
    # Global photometric variation of the whole picture (camera-like).
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    img = img + rng.normal(0, rng.uniform(0.0, 0.04), img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def generate(cfg: DemoDataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of one split: ``(N, S, S, 3)`` uint8 images and ``(N, S, S)`` uint8 masks."""
    n = {"labeled": cfg.num_labeled, "unlabeled": cfg.num_unlabeled, "val": cfg.num_val}[split]
    # One independent stream per split: the splits are disjoint and each is stable when the
    # size of another changes.
    rng = np.random.default_rng([cfg.seed, _STREAMS[split]])
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    masks = np.empty((n, cfg.image_size, cfg.image_size), np.uint8)
    for i in range(n):
        images[i], masks[i] = render_image(rng, cfg.image_size)
    return images, masks


FOLDER_MARKER = "demo_data.json"  # written last: the folder is complete, made from this config


def write_demo_folder(cfg: DemoDataConfig, out) -> bool:
    """Write the demo dataset to ``out`` in the ``folder`` layout (``data/folder.py``):
    ``classes.yaml``, ``train/images`` + ``train/masks`` (the labelled set), ``unlabeled/``,
    ``val/images`` + ``val/masks``, all PNG, named as in memory (``labeled_00000``, ...).

    The masks of the unlabelled images, which training never sees, go to
    ``unlabeled_masks/`` (not read by the folder dataset): experiments that label more images
    (``benchmarks/label_next.sh``) take them from there. Returns False when ``out`` already
    holds this very dataset (nothing written); a folder holding anything else is refused.
    """
    out = Path(out)
    wanted = dataclasses.asdict(cfg)
    marker = out / FOLDER_MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found == wanted:
            return False
        raise DataError(
            f"{out} holds demo data of another config ({found}, asked for {wanted}): "
            "choose another --out, or delete that folder"
        )
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: demo-data writes into a new or empty folder")
    folders = {
        "labeled": ("train/images", "train/masks"),
        "unlabeled": ("unlabeled", "unlabeled_masks"),
        "val": ("val/images", "val/masks"),
    }
    for split, (image_dir, mask_dir) in folders.items():
        images, masks = generate(cfg, split)
        for sub in (image_dir, mask_dir):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for i, (image, mask) in enumerate(zip(images, masks)):
            Image.fromarray(image).save(out / image_dir / f"{split}_{i:05d}.png")
            Image.fromarray(mask).save(out / mask_dir / f"{split}_{i:05d}.png")
    classes = [{"name": n, "color": list(c)} for n, c in zip(CLASSES, PALETTE)]
    (out / "classes.yaml").write_text(
        yaml.safe_dump({"classes": classes}, sort_keys=False, default_flow_style=None)
    )
    marker.write_text(json.dumps(wanted))
    return True
