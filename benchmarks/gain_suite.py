"""The gain suite: do unlabelled images pay on data of different character, nobody tuned on?

Seven datasets made from real pixels that scikit-image bundles (photos and textures inside its
wheel; nothing is downloaded), each of a kind users bring (``DATASETS`` says which), written in
the ``folder`` layout so that ``dualteacher compare CONFIG data.name=folder data.root=ROOT``
trains on them exactly as on a user's own folder. ``run`` trains supervised (to its plateau:
``--steps-sup``, by default twice Dual Teacher's steps, as ``dualteacher demo`` does) and
Dual Teacher (``--steps-dt``) for every training seed through ``dualteacher.study.compare`` and
prints one table: per dataset both methods' final and best mIoU, the paired differences
Dual Teacher final - supervised final and Dual Teacher final - supervised best (mean, 95 %
interval, per seed), and the suite mean; under it, the bar (``against_the_bar``): which
datasets have Dual Teacher above supervised's best with the interval above 0, which classes fall
more than 5 points, and where Dual Teacher's seed spread is over 1.5x supervised's, by name.

Tuning and held-out. Every dataset is a pure function of its generator and a data seed, the
*draw*. ``DRAWS`` (below, the one place this is declared) splits the draws: ``tuning`` draws
are where settings may be chosen (run lengths, thresholds, strong views, defaults, anything);
``heldout`` draws only report the settings chosen elsewhere. **Nothing is ever chosen on a
held-out draw**: not a default, not a step count, not which datasets are in the suite; a
held-out table is run once per decided change and reported as it comes out. ``--split``
selects the draws.

Layout under ``--out`` (generated once: a dataset whose ``dataset.json`` records the same
parameters is reused, another one there is refused)::

    OUT/data/<name>_draw<seed>/data/       the folder dataset (data.root): classes.yaml,
                                           train/images+masks, unlabeled/, val/images+masks
    OUT/data/<name>_draw<seed>/truth/unlabeled/<image>.png
                                           true masks of the unlabelled images (outside
                                           data.root: training never reads them)
    OUT/data/<name>_draw<seed>/dataset.json  its parameters (written last)
    OUT/<split>/<name>_draw<seed>/         that dataset's ``compare`` (runs, summary.json)
    OUT/<split>/suite.md, suite.json       the table (of every dataset run into OUT with the
                                           same settings: ``--datasets`` may add them in turns)

Statistics are ``dualteacher.study.compare``'s: per dataset the paired difference over training
seeds (same seed, same data on both sides) with a Student-t 95 % interval. The suite mean is
the mean over datasets of the per-dataset paired means; its interval is Student's t over the
datasets (one value per dataset, n - 1 = datasets - 1 degrees of freedom: would the gain hold
on another dataset like these), and ``suite.json`` also has the interval over all
dataset x seed differences pooled (``ci95_pooled``).

``diagnose CKPT_OR_RUN_DIR --truth OUT/data/<name>_draw<seed>/truth`` runs a Dual Teacher
checkpoint's teachers and student over the unlabelled images and compares their pseudo-labels
with the true masks kept aside: per-class IoU / precision / recall (all pseudo-labels and the
confident ones), per-class confident-pixel ratio at the run's ``method.conf_thresh``,
pseudo-label class balance against the truth's, and teacher-student pixel agreement.
``panel [LABEL=]CKPT ... --data OUT/data/<name>_draw<seed>/data --class C --out PNG`` follows
one class through several checkpoints on the validation images: its IoU, precision, recall
and the class that takes most of its pixels, and a figure of the images where it is largest.

    python benchmarks/gain_suite.py --split tuning --seeds 3 --jobs 2 --out runs/gain_suite
    python benchmarks/gain_suite.py --split tuning --datasets shapes,scratches --steps-dt 600
    python benchmarks/gain_suite.py --split tuning --warm-start --seeds 2 --out runs/knob \\
        --supervised-from runs/gain_suite method.dual_teacher.ic_weight=0.5   # same supervised runs
    python benchmarks/gain_suite.py table runs/gain_suite/tuning/suite.json   # print it again
    python benchmarks/gain_suite.py diagnose \\
        runs/gain_suite/tuning/shapes_draw100/dual_teacher_seed0 \\
        --truth runs/gain_suite/data/shapes_draw100/truth
    python benchmarks/gain_suite.py panel sup=RUN_A dt=RUN_B \\
        --data runs/gain_suite/data/ten_textures_draw100/data --class beans --out beans.png
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage import draw as skdraw

from dualteacher.config import DemoDataConfig
from dualteacher.data import demo
from dualteacher.data.demo import _background, _shape_mask, _texture, _warp_crop

# ---------------------------------------------------------------------------- tuning / held-out
# The one place the draws are declared. Settings are chosen on "tuning" draws only; "heldout"
# draws are reported, never tuned on (module docstring). 100 and 2026 are the demo's own
# tuning and held-out seeds, so the suite's demo row at a draw is `dualteacher demo`'s data at
# data.demo.seed=<draw>.
DRAWS: dict[str, tuple[int, ...]] = {"tuning": (100,), "heldout": (2026,)}

GENERATOR_VERSION = 1  # bump when a generator's output changes: cached datasets are refused
_STREAMS = {"labeled": 1, "unlabeled": 2, "val": 3}  # as the demo's: independent splits
_SPLIT_DIRS = {  # split -> (image folder, mask folder), relative to the dataset directory
    "labeled": ("data/train/images", "data/train/masks"),
    "unlabeled": ("data/unlabeled", "truth/unlabeled"),
    "val": ("data/val/images", "data/val/masks"),
}
METADATA = "dataset.json"


# ------------------------------------------------------------------------------- pixel sources
def _unit(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return (_unit(img) * 255).astype(np.uint8)


def _photo(rng: np.random.Generator, size: int, names: list[str]) -> np.ndarray:
    """(size, size, 3) float view of one of the bundled photos ``names``."""
    bg = _background(names[rng.integers(len(names))])
    return _warp_crop(bg, size, rng, scale=rng.uniform(0.6, 3.0))


def _gray_photo(rng: np.random.Generator, size: int, names: list[str]) -> np.ndarray:
    """(size, size) float view of one photo, as luminance."""
    return _photo(rng, size, names) @ np.array([0.299, 0.587, 0.114], np.float32)


def _random_tint(rng: np.random.Generator) -> np.ndarray:
    """A random colour, independent of any class: colour carries no class information."""
    return rng.uniform(0.25, 1.0, 3).astype(np.float32)


def _textured(tex: np.ndarray, rng: np.random.Generator, tint: np.ndarray | None) -> np.ndarray:
    """A contrast-varied texture view, tinted to (H, W, 3) (``tint`` None: grey, (H, W))."""
    out = np.clip(0.5 + rng.uniform(0.8, 1.3) * (tex - 0.5), 0, 1) + rng.uniform(-0.15, 0.2)
    return out if tint is None else out[..., None] * tint


# Colour photos cut to their textured part: (name, rows, cols).
_COLOUR_TEXTURES = {
    "hubble": ("hubble_deep_field", slice(0, 872), slice(0, 1000)),
    "stain": ("immunohistochemistry", slice(0, 512), slice(0, 512)),
    "fur": ("chelsea", slice(150, 300), slice(0, 140)),
    "beans": ("coffee", slice(0, 120), slice(0, 600)),
}


def _source(name: str) -> np.ndarray:
    """Texture ``name``: grey textures (H, W) from ``demo._texture``, colour ones (H, W, 3)."""
    if name in _COLOUR_TEXTURES:
        photo, rows, cols = _COLOUR_TEXTURES[name]
        return _background(photo)[rows, cols]
    return _texture(name)


# ------------------------------------------------------------------------------------- shapes
_SHAPES = ["disc", "square", "triangle", "star", "cross"]
# circumradius factors that give the shapes about the same area (size is no class cue)
_SHAPE_SCALE = {"disc": 0.85, "square": 1.0, "triangle": 1.25, "star": 1.3, "cross": 1.1}


def _shape_vertices(kind: str, r: float, angle: float) -> np.ndarray | None:
    """(N, 2) vertices (dy, dx) of a regular ``kind`` of circumradius ``r`` (None: disc)."""
    if kind == "disc":
        return None
    if kind == "square":
        t, rad = np.arange(4) * np.pi / 2 + np.pi / 4, np.full(4, r)
    elif kind == "triangle":
        t, rad = np.arange(3) * 2 * np.pi / 3, np.full(3, r)
    elif kind == "star":
        t, rad = np.arange(10) * np.pi / 5, np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    else:  # cross: a plus sign, arms a third as wide as the whole
        a = r / 3
        pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r)]
        pts += [(-y, -x) for y, x in pts]
        p = np.array(pts, float)
        t, rad = np.arctan2(p[:, 0], p[:, 1]), np.hypot(p[:, 0], p[:, 1])
    t = t + angle
    return np.stack([rad * np.sin(t), rad * np.cos(t)], 1)


def _shape(kind: str, size: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    v = _shape_vertices(kind, r * _SHAPE_SCALE[kind], angle)
    if v is None:
        rr, cc = skdraw.disk((cy, cx), r * _SHAPE_SCALE[kind], shape=(size, size))
    else:
        rr, cc = skdraw.polygon(cy + v[:, 0], cx + v[:, 1], (size, size))
    mask[rr, cc] = True
    return mask


def _place(rng, size, n: int, radius: tuple[float, float], margin: float = 0.9):
    """Up to ``n`` (cy, cx, r) that overlap little (centres >= ``margin`` x (r1 + r2) apart)."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(20 * n):
        if len(placed) == n:
            break
        r = rng.uniform(*radius) * size
        cy, cx = rng.uniform(r * 0.8, size - r * 0.8, 2)
        if all(math.hypot(cy - y, cx - x) >= margin * (r + q) for y, x, q in placed):
            placed.append((cy, cx, r))
    return placed


# ---------------------------------------------------------------------------------- generators
_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina"]
_GRAY_PHOTOS = ["camera", "moon", "coins", "clock", "cell", "astronaut", "rocket"]
_GREY_CLASS_TEXTURES = ["brick", "grass", "gravel"]


def render_shapes(rng: np.random.Generator, size: int):
    """1-3 shapes on a photo; every shape has a random texture and a random colour."""
    img = _photo(rng, size, _PHOTOS)
    mask = np.zeros((size, size), np.uint8)
    for cy, cx, r in _place(rng, size, int(rng.integers(1, 4)), (0.15, 0.26)):
        cls = int(rng.integers(len(_SHAPES)))
        tex = _texture(demo._TEXTURES[rng.integers(len(demo._TEXTURES))])
        obj = _textured(_warp_crop(tex, size, rng, rng.uniform(0.5, 1.5)), rng, _random_tint(rng))
        m = _shape(_SHAPES[cls], size, cy, cx, r, rng.uniform(0, 2 * np.pi))
        img[m] = _unit(obj[m])
        mask[m] = cls + 1
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img), mask


def render_gray(rng: np.random.Generator, size: int):
    """Grey-level textures on grey photos; brightness and contrast vary per object."""
    img = _gray_photo(rng, size, _GRAY_PHOTOS)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(len(_GREY_CLASS_TEXTURES)))
        tex = _warp_crop(_texture(_GREY_CLASS_TEXTURES[cls]), size, rng, rng.uniform(0.5, 1.5))
        m = _shape_mask(size, rng)
        img[m] = _unit(_textured(tex, rng, None)[m])
        mask[m] = cls + 1
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img), mask  # R == G == B


_SURFACES = ["brick", "gravel", "grass", "moon", "cell"]
MAX_DEFECT_SHARE = 0.05  # at most this share of an image's pixels is defect


def render_scratches(rng: np.random.Generator, size: int):
    """A tinted surface texture; 0-3 thin scratches or small spots (the rare class 1)."""
    tex = _warp_crop(_texture(_SURFACES[rng.integers(len(_SURFACES))]), size, rng, 1.0)
    img = _textured(tex, rng, rng.uniform(0.5, 1.0, 3).astype(np.float32))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))):
        m = np.zeros((size, size), bool)
        if rng.random() < 0.6:  # scratch: a polyline of 2-3 segments, 1-2 px wide
            y, x = rng.uniform(0, size, 2)
            for _ in range(int(rng.integers(2, 4))):
                ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3) * size
                y2 = np.clip(y + length * np.sin(ang), 0, size - 1)
                x2 = np.clip(x + length * np.cos(ang), 0, size - 1)
                rr, cc = skdraw.line(int(y), int(x), int(y2), int(x2))
                m[rr, cc] = True
                y, x = y2, x2
            if rng.random() < 0.4:
                m |= np.roll(m, 1, axis=int(rng.integers(2)))
        else:  # spot: a small blob
            rr, cc = skdraw.ellipse(
                *rng.uniform(0, size, 2),
                *rng.uniform(1.0, 2.8, 2),
                (size, size),
                rotation=rng.uniform(0, np.pi),
            )
            m[rr, cc] = True
        if (mask > 0).sum() + m.sum() > MAX_DEFECT_SHARE * size * size:
            break
        # darker or lighter than the surface, by a contrast that varies: faint to clear
        shade = rng.choice([0.0, 1.0])
        alpha = rng.uniform(0.35, 0.75)
        img[m] = (1 - alpha) * img[m] + alpha * shade
        mask[m] = 1
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img), mask


_TEN = ["brick", "grass", "gravel", "text", "moon", "cell", "hubble", "stain", "fur", "beans"]
_TEN_BACKGROUNDS = ["astronaut", "rocket", "colorwheel", "camera", "clock", "retina"]


def render_ten(rng: np.random.Generator, size: int):
    """2-4 objects of 10 texture classes on a photo; grey textures get a random tint."""
    img = _photo(rng, size, _TEN_BACKGROUNDS)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(len(_TEN)))
        src = _source(_TEN[cls])
        view = _warp_crop(src, size, rng, rng.uniform(0.5, 1.5))
        tint = _random_tint(rng) if view.ndim == 2 else None
        obj = _textured(view, rng, tint)
        m = _shape_mask(size, rng)
        img[m] = _unit(obj[m])
        mask[m] = cls + 1
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img), mask


def render_small(rng: np.random.Generator, size: int):
    """5-12 small objects (radius 3-7 % of the side) of the demo's tinted textures."""
    img = _photo(rng, size, _PHOTOS)
    mask = np.zeros((size, size), np.uint8)
    for cy, cx, r in _place(rng, size, int(rng.integers(5, 13)), (0.03, 0.07), margin=1.0):
        cls = int(rng.integers(3))
        tex = _warp_crop(_texture(demo._TEXTURES[cls]), size, rng, rng.uniform(0.4, 0.9))
        base = np.array(demo._CLASS_TINT[cls]) * rng.uniform(0.6, 1.0)
        tint = np.clip(base + rng.uniform(-demo._TINT_JITTER, demo._TINT_JITTER, 3), 0.05, 1)
        obj = _textured(tex, rng, tint.astype(np.float32))
        m = _shape(_SHAPES[rng.integers(len(_SHAPES))], size, cy, cx, r, rng.uniform(0, 6.3))
        img[m] = _unit(obj[m])
        mask[m] = cls + 1
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, img.shape)
    return _to_uint8(img), mask


# ------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Dataset:
    """One suite dataset: its generator, classes, default sizes and training overrides."""

    name: str
    character: str  # what kind of user data it stands for
    classes: list[str]
    render: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    image_size: int = 64
    num_labeled: int = 40
    num_unlabeled: int = 1000
    num_val: int = 200
    overrides: tuple[str, ...] = ()  # config overrides this dataset needs (e.g. its crop)
    palette: list[tuple[int, int, int]] | None = None
    extra: dict = field(default_factory=dict)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "shapes",
            "classes defined by shape, not colour or texture: disc, square, triangle, star, "
            "cross; every object has a random texture and colour, on colour photos",
            ["background", *_SHAPES],
            render_shapes,
            num_labeled=40,
        ),
        Dataset(
            "shapes128",
            "shapes at 128 px, the size of a user's folder the issue names (40 labelled, 1000 "
            "unlabelled, 200 val): objects up to ~77 px (median 50), trained on whole images "
            "(a 64 px crop cuts most of them: `check` says so)",
            ["background", *_SHAPES],
            render_shapes,
            image_size=128,
            num_labeled=40,
            overrides=("data.crop_size=128",),
        ),
        Dataset(
            "gray",
            "grayscale images (R = G = B): brick, grass and gravel textures of varied "
            "brightness and contrast on grey photos; only texture tells the classes apart",
            ["background", *_GREY_CLASS_TEXTURES],
            render_gray,
            num_labeled=30,
        ),
        Dataset(
            "scratches",
            "binary defect detection with a rare foreground: thin scratches and small spots on "
            f"tinted surface textures, <= {MAX_DEFECT_SHARE:.0%} of each image's pixels, 30 % of "
            "images have none",
            ["surface", "defect"],
            render_scratches,
            num_labeled=60,
        ),
        Dataset(
            "ten_textures",
            "11 classes: ten real textures (brick, grass, gravel, printed text, moon, cells, "
            "Hubble field, stained tissue, cat fur, coffee beans) on photos, grey ones tinted at "
            "random",
            ["background", *_TEN],
            render_ten,
            num_labeled=100,
        ),
        Dataset(
            "small_objects",
            "small objects in large images: 5-12 objects of 5-11 px radius in 160 px images, "
            "trained on 64 px crops; the demo's brick/grass/gravel with their colour cues",
            ["background", *demo._TEXTURES[:3]],
            render_small,
            image_size=160,
            num_labeled=40,
            overrides=("data.crop_size=64",),
        ),
        Dataset(
            "demo",
            "the built-in demo (colour + texture, 4 classes on photos), as `dualteacher demo` "
            "makes it with data.demo.seed=<draw>",
            list(demo.CLASSES),
            demo.render_image,
            num_labeled=24,
            num_unlabeled=1200,
            palette=list(demo.PALETTE),
        ),
    ]
}


def dataset_params(ds: Dataset, draw: int, **sizes) -> dict:
    """What a generated dataset is a function of (``dataset.json``)."""
    params = {
        "name": ds.name,
        "draw": draw,
        "image_size": ds.image_size,
        "num_labeled": ds.num_labeled,
        "num_unlabeled": ds.num_unlabeled,
        "num_val": ds.num_val,
        "version": GENERATOR_VERSION,
    }
    params.update({k: v for k, v in sizes.items() if v is not None})
    return params


def generate(ds: Dataset, draw: int, split: str, n: int, size: int):
    """Yield ``(image, mask)`` of one split: the demo's stream scheme, one stream per split."""
    if ds.name == "demo":  # exactly the demo's own data at data.demo.seed=draw
        cfg = DemoDataConfig(num_labeled=n, num_unlabeled=n, num_val=n, image_size=size, seed=draw)
        images, masks = demo.generate(cfg, split)
        yield from zip(images, masks)
        return
    rng = np.random.default_rng([draw, _STREAMS[split]])
    for _ in range(n):
        yield ds.render(rng, size)


def write_dataset(ds: Dataset, draw: int, out: str | Path, **sizes) -> dict:
    """Write ``ds`` at ``draw`` to ``out`` (layout in the module docstring), unless ``out``
    already holds it. ``sizes``: ``image_size``, ``num_labeled``, ``num_unlabeled``,
    ``num_val`` replacing the dataset's defaults. Returns ``dataset.json``'s content."""
    import yaml
    from PIL import Image

    out = Path(out)
    params = dataset_params(ds, draw, **sizes)
    marker = out / METADATA
    if marker.is_file():
        found = json.loads(marker.read_text())
        if {k: found.get(k) for k in params} == params:
            return found
        raise SystemExit(
            f"{out} holds {ds.name} with other parameters ({found}), asked for {params}: "
            "give another --out, or delete that folder"
        )
    if out.exists() and any(out.iterdir()):
        raise SystemExit(
            f"{out} is not empty and has no {METADATA}: delete it or use another --out"
        )
    size = params["image_size"]
    for split, (image_dir, mask_dir) in _SPLIT_DIRS.items():
        for sub in (image_dir, mask_dir):
            (out / sub).mkdir(parents=True, exist_ok=True)
        n = params[f"num_{split}"]
        for i, (image, mask) in enumerate(generate(ds, draw, split, n, size)):
            Image.fromarray(image).save(out / image_dir / f"{split}_{i:05d}.png")
            Image.fromarray(mask).save(out / mask_dir / f"{split}_{i:05d}.png")
    classes = [
        {"name": n, "color": list(c)} if ds.palette else n
        for n, c in zip(ds.classes, ds.palette or [None] * len(ds.classes))
    ]
    (out / "data" / "classes.yaml").write_text(
        yaml.safe_dump({"classes": classes}, sort_keys=False, default_flow_style=None)
    )
    meta = {**params, "character": ds.character, "classes": ds.classes}
    marker.write_text(json.dumps(meta, indent=2))  # last: the folder is complete
    return meta


# --------------------------------------------------------------------------------------- suite
DEFAULT_STEPS_DT = 1200
DEFAULT_STEPS_SUP = 2400  # 2x: supervised to its plateau, as `dualteacher demo` (supervised:2x)
BASE_CONFIG = "demo"  # the demo's model and recipe, as a new user would run a folder
BASE_OVERRIDES = ("train.threads=1",)  # one thread per run, as `dualteacher demo`: --jobs 2


def dataset_dir(out: Path, name: str, draw: int) -> Path:
    return Path(out) / "data" / f"{name}_draw{draw}"


def select(names: str | None) -> list[Dataset]:
    if not names:
        return list(DATASETS.values())
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in DATASETS]
    if unknown:
        raise SystemExit(
            f"unknown dataset(s) {', '.join(unknown)}; the suite has {', '.join(DATASETS)}"
        )
    return [DATASETS[n] for n in wanted]


def _methods(steps_sup: int, steps_dt: int, warm_start: bool = False) -> list[str]:
    """compare's rows: supervised with its multiple of Dual Teacher's step budget, and Dual
    Teacher. ``warm_start``: Dual Teacher starts from that supervised run's final checkpoint
    (``dual_teacher@supervised:Kx``), and supervised continued from it for the same steps
    (``supervised@supervised:Kx``) is the row it is measured against: the same total steps and
    the same restart of the schedule, without the unlabelled images."""
    mult = steps_sup / steps_dt
    sup = "supervised" if mult == 1 else f"supervised:{mult!r}x"
    if not warm_start:
        return [sup, "dual_teacher"]
    return [sup, f"dual_teacher@{sup}", f"supervised@{sup}"]


def _reference(results: list[dict], warm_start: bool) -> tuple[dict, dict, list[float]]:
    """``(supervised row, Dual Teacher row, supervised best per seed)``. Cold: the supervised
    row and its best. Warm: supervised continued as the row, and per seed the best of the
    whole supervised trajectory (its first run or its continuation, whichever is higher)."""
    if not warm_start:
        sup, dt = results
        return sup, dt, sup["best_miou_per_seed"]
    first, dt, sup = results
    best = [max(a, b) for a, b in zip(first["best_miou_per_seed"], sup["best_miou_per_seed"])]
    return sup, dt, best


def run_suite(
    split: str,
    out: str | Path,
    seeds: int = 3,
    jobs: int = 1,
    datasets: str | None = None,
    steps_sup: int = DEFAULT_STEPS_SUP,
    steps_dt: int = DEFAULT_STEPS_DT,
    overrides: list[str] | tuple[str, ...] = (),
    sizes: dict | None = None,
    config: str = BASE_CONFIG,
    warm_start: bool = False,
    supervised_from: str | Path | None = None,
) -> dict:
    """Generate (or reuse) the datasets of ``split``'s draws, run ``compare`` on each, write
    ``OUT/<split>/suite.md`` and ``suite.json``; returns the latter's content.
    ``supervised_from``: another suite's OUT whose datasets and supervised runs (same
    supervised steps and seeds; its Dual Teacher budget may differ) this one copies and
    reuses, so a Dual Teacher setting or length is screened against the very same supervised
    runs (``copy_supervised``)."""
    from dualteacher.config import load_config
    from dualteacher.study.compare import compare, paired_difference, parse_run_specs

    if split not in DRAWS:
        raise SystemExit(f"--split {split}: choose one of {', '.join(DRAWS)}")
    out = Path(out)
    sizes = {k: v for k, v in (sizes or {}).items() if v is not None}
    methods = _methods(steps_sup, steps_dt, warm_start)
    # run folder names of the supervised rows: the first run, and supervised continued
    first, *others = [spec.dirname for spec in parse_run_specs(methods)]
    continued = others[-1] if warm_start else None
    rows = []
    for draw in DRAWS[split]:
        for ds in select(datasets):
            where = dataset_dir(out, ds.name, draw)
            if supervised_from is not None:
                copy_supervised(Path(supervised_from), out, split, ds.name, draw, first, continued)
            print(f"\n##### {ds.name} (draw {draw}): {where}")
            meta = write_dataset(ds, draw, where, **sizes)
            cfg = load_config(
                config,
                [
                    *BASE_OVERRIDES,
                    "data.name=folder",
                    f"data.root={where / 'data'}",
                    *ds.overrides,
                    *overrides,
                ],
            )
            summary = compare(
                cfg,
                methods,
                out / split / f"{ds.name}_draw{draw}",
                list(range(seeds)),
                steps=steps_dt,
                jobs=jobs,
            )
            sup, dt, sup_best = _reference(summary["results"], warm_start)
            rows.append(
                {
                    "dataset": ds.name,
                    "draw": draw,
                    "character": ds.character,
                    "sizes": {
                        k: meta[k]
                        for k in ("image_size", "num_labeled", "num_unlabeled", "num_val")
                    },
                    "num_classes": len(ds.classes),
                    "root": str(where / "data"),
                    "truth": str(where / "truth"),
                    "summary": str(out / split / f"{ds.name}_draw{draw}" / "summary.json"),
                    "supervised": _method_row(sup),
                    "dual_teacher": _method_row(dt),
                    "final_vs_final": paired_difference(dt["miou_per_seed"], sup["miou_per_seed"]),
                    "supervised_best_per_seed": sup_best,
                    "final_vs_best": paired_difference(dt["miou_per_seed"], sup_best),
                    "class_diff": class_differences(summary["classes"], dt, sup),
                    "spread_ratio": spread_ratio(dt["miou_per_seed"], sup["miou_per_seed"]),
                }
            )
    settings = {
        "split": split,
        "draws": list(DRAWS[split]),
        "seeds": list(range(seeds)),
        "steps": {"supervised": steps_sup, "dual_teacher": steps_dt},
        "methods": methods,
        "warm_start": warm_start,
        "config": config,
        "overrides": [*BASE_OVERRIDES, *overrides],
        "sizes": sizes,
    }
    rows = merge_rows(out / split / "suite.json", settings, rows)
    suite = {
        key: _suite_mean(rows, key, paired_difference)
        for key in ("final_vs_final", "final_vs_best")
    }
    result = {**settings, "jobs": jobs, "datasets": rows, "suite": suite}
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / split / "suite.json").write_text(json.dumps(result, indent=2))
    (out / split / "suite.md").write_text(format_markdown(result))
    print("\n" + format_table(result))
    print(f"\nwrote {out / split / 'suite.md'} and {out / split / 'suite.json'}")
    return result


def merge_rows(path: Path, settings: dict, rows: list[dict]) -> list[dict]:
    """``rows`` and the rows of the other datasets in the earlier ``suite.json`` at ``path``
    when it was run with the same ``settings`` (steps, seeds, methods, overrides, ...): a suite
    run a few datasets at a time (``--datasets``) into one ``--out`` ends with one table of
    them all. A table of other settings is replaced (its runs stay where they are), and the
    replacement is said."""
    if not path.is_file():
        return rows
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"note: {path} unreadable ({e}); it is replaced by this run's table")
        return rows
    if {k: earlier.get(k) for k in settings} != json.loads(json.dumps(settings)):
        print(f"note: {path} holds a table of other settings; it is replaced by this run's")
        return rows
    new = {(r["dataset"], r["draw"]): r for r in rows}
    merged = [new.pop((r["dataset"], r["draw"]), r) for r in earlier.get("datasets", [])]
    return merged + list(new.values())  # a rerun row keeps its place, a new one comes last


def copy_supervised(
    source: Path, out: Path, split: str, name: str, draw: int, first: str, continued: str | None
) -> None:
    """Copy ``source``'s dataset folder and supervised run folders of one dataset and draw
    into ``out`` (where ``out`` has none of its own). compare then
    reuses those runs as finished: a continued run started from a copy of the same checkpoint
    is the same plan (``same_checkpoint``), and a supervised run does not read the Dual
    Teacher settings that differ. Copies, not links: no write of this suite reaches
    ``source``.

    ``first``, ``continued``: this suite's folder names of its first supervised row
    (``supervised_0.25x``) and of supervised continued (None without one). A run
    folder's name carries the ratio of the supervised steps to Dual Teacher's, so a suite of
    another Dual Teacher budget names the same 1200-step runs otherwise: the source's first
    runs are copied under this suite's name (a run of other steps is then refused by compare's
    budget check, never adopted), its continued runs only where the names match (their steps
    are the Dual Teacher budget)."""
    runs = source / split / f"{name}_draw{draw}"
    if not runs.is_dir():
        raise SystemExit(f"--supervised-from {source}: no {runs} (run that suite first)")
    pairs = [(dataset_dir(source, name, draw), dataset_dir(out, name, draw))]
    for d in sorted(runs.glob("supervised*")):
        head, seed_sep, seed = d.name.rpartition("_seed")
        if not seed_sep:  # one seed: compare names the folder without the suffix
            head = d.name
        if "_from_" in head:  # a continued run: its steps are the Dual Teacher budget's
            if head == continued:
                pairs.append((d, out / split / runs.name / d.name))
        else:
            pairs.append((d, out / split / runs.name / f"{first}{seed_sep}{seed}"))
    for src, dst in pairs:
        if dst.exists() or not src.is_dir():
            continue
        shutil.copytree(src, dst, symlinks=True)


def _method_row(r: dict) -> dict:
    keep = ("method", "miou", "miou_std", "best_miou", "best_miou_std", "miou_per_seed")
    row = {k: r[k] for k in keep}
    row |= {k: r[k] for k in ("best_miou_per_seed", "best_step_per_seed", "steps", "step_seconds")}
    return row


def class_differences(classes: list[str], dt: dict, sup: dict) -> dict[str, float | None]:
    """Per class, Dual Teacher's final IoU minus the reference's, the mean over the seeds where
    both define it (None where no seed does): what "no class falls more than 5 points below
    supervised" is judged on."""
    out: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        pairs = [
            (a[k], b[k])
            for a, b in zip(dt["class_iou_per_seed"], sup["class_iou_per_seed"])
            if a[k] is not None and b[k] is not None
        ]
        out[name] = float(np.mean([a - b for a, b in pairs])) if pairs else None
    return out


def worst_class(diff: dict[str, float | None]) -> tuple[str, float] | None:
    """``(class, difference)`` of the class that Dual Teacher loses most on (or gains least)."""
    defined = [(v, name) for name, v in diff.items() if v is not None]
    if not defined:
        return None
    value, name = min(defined)
    return name, value


def spread_ratio(dt: list[float], sup: list[float]) -> float | None:
    """Dual Teacher's standard deviation over seeds divided by the reference's (None with one
    seed, inf where the reference does not vary)."""
    if len(dt) < 2:
        return None
    a, b = float(np.std(dt, ddof=1)), float(np.std(sup, ddof=1))
    return a / b if b > 0 else math.inf


def _row_name(row: dict) -> str:
    """``shapes@2026``: a suite row's dataset and draw, as every table names it."""
    return f"{row['dataset']}@{row['draw']}"


def _suite_mean(rows: list[dict], key: str, paired_difference) -> dict:
    """Mean over datasets of the per-dataset paired means; 95 % interval over datasets (one
    value per dataset) and, as ``ci95_pooled``, over all dataset x seed differences."""
    means = [r[key]["mean"] for r in rows]
    over_datasets = paired_difference(means, [0.0] * len(means))
    pooled = [d for r in rows for d in r[key]["per_seed"]]
    over_all = paired_difference(pooled, [0.0] * len(pooled))
    return {
        "mean": over_datasets["mean"],
        "std_over_datasets": over_datasets["std"],
        "ci95": over_datasets["ci95"],
        "per_dataset": dict(zip(map(_row_name, rows), means)),
        "mean_pooled": over_all["mean"],
        "ci95_pooled": over_all["ci95"],
        "n_datasets": len(rows),
        "n_pooled": len(pooled),
    }


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _diff(d: dict, per_seed: bool = True) -> str:
    text = f"{d['mean']:+.2f}"
    if d.get("ci95") is not None:
        text += f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
    if per_seed and "per_seed" in d:
        text += "; " + " ".join(f"{x:+.1f}" for x in d["per_seed"])
    return text


_HEAD = [
    "dataset",
    "sup final",
    "sup best",
    "DT final",
    "DT best",
    "DT final - sup final [95%]; per seed",
    "DT final - sup best [95%]; per seed",
    "worst class: DT - sup final",
    "std DT / sup final",
]


def _cells(result: dict) -> list[list[str]]:
    rows = []
    for r in result["datasets"]:
        s, t = r["supervised"], r["dual_teacher"]
        rows.append(
            [
                _row_name(r),
                _pm(s["miou"], s["miou_std"]),
                _pm(*_mean_std(r.get("supervised_best_per_seed", s["best_miou_per_seed"]))),
                _pm(t["miou"], t["miou_std"]),
                _pm(t["best_miou"], t["best_miou_std"]),
                _diff(r["final_vs_final"]),
                _diff(r["final_vs_best"]),
                _worst_text(r),
                _ratio_text(r.get("spread_ratio")),
            ]
        )
    su = result["suite"]
    rows.append(
        [
            f"SUITE MEAN ({su['final_vs_final']['n_datasets']} datasets)",
            *[""] * 4,
            _diff(su["final_vs_final"], per_seed=False),
            _diff(su["final_vs_best"], per_seed=False),
            _worst_text(min(result["datasets"], key=_worst_value), with_dataset=True),
            "",
        ]
    )
    return rows


def _worst_value(row: dict) -> float:
    worst = worst_class(row.get("class_diff") or {})
    return worst[1] if worst is not None else math.inf


def _worst_text(row: dict, with_dataset: bool = False) -> str:
    """``beans -4.8`` (``ten_textures: beans -4.8`` for the suite row); ``-`` for a suite run
    before per-class IoUs were recorded."""
    worst = worst_class(row.get("class_diff") or {})
    if worst is None:
        return "-"
    text = f"{worst[0]} {worst[1]:+.1f}"
    return f"{row['dataset']}: {text}" if with_dataset else text


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


# The bar a recipe is held to (issue 23's "done when"): on every dataset Dual Teacher's final
# mIoU above supervised's best with the paired interval above 0, the suite mean at least
# BAR_MEAN above it, no class more than BAR_CLASS_DROP points below supervised's final, and
# Dual Teacher's spread over seeds at most BAR_SPREAD times supervised's.
BAR_MEAN = 3.0
BAR_CLASS_DROP = 5.0
BAR_SPREAD = 1.5


def against_the_bar(result: dict) -> list[str]:
    """Four lines that say, from the table alone, which datasets and classes meet the bar and
    which do not (the names, not only the counts), so a claim about the bar is the command's
    output and never a sum done by hand."""
    rows = result["datasets"]
    names = [_row_name(r) for r in rows]

    def listed(pairs: list[tuple[str, str]]) -> str:
        return ", ".join(f"{n} {v}" for n, v in pairs) if pairs else "none"

    above, below = [], []  # one pass: each dataset lands in exactly one of the two
    for n, r in zip(names, rows):
        if (r["final_vs_best"].get("ci95") or [0])[0] > 0:
            above.append(n)
        else:
            below.append((n, _diff(r["final_vs_best"], per_seed=False)))
    mean = result["suite"]["final_vs_best"]["mean"]
    drops = [
        (f"{n}: {c}", f"{v:+.1f}")
        for n, r in zip(names, rows)
        for c, v in (r.get("class_diff") or {}).items()
        if v is not None and v < -BAR_CLASS_DROP
    ]
    wide = [
        (n, _ratio_text(r["spread_ratio"]))
        for n, r in zip(names, rows)
        if r.get("spread_ratio") is not None and r["spread_ratio"] > BAR_SPREAD
    ]
    return [
        f"- DT final above sup best, 95 % interval above 0: {len(above)} of {len(rows)} "
        f"datasets ({', '.join(above) or 'none'}); not: {listed(below)}",
        f"- suite mean of DT final - sup best: {mean:+.2f} "
        f"({'meets' if mean >= BAR_MEAN else 'below'} the bar of +{BAR_MEAN:.0f})",
        f"- classes more than {BAR_CLASS_DROP:.0f} points below sup final: {listed(drops)}",
        f"- std DT / sup final above {BAR_SPREAD}x: {listed(wide)}",
    ]


def format_table(result: dict) -> str:
    """The terminal table: one row per dataset, then the suite mean, then the bar."""
    cells = [_HEAD, *_cells(result)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEAD))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    bar = ["Against the bar:", *against_the_bar(result)]
    return "\n".join([_caption(result), "", *lines, "", _footnote(result), "", *bar])


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _caption(result: dict) -> str:
    st = result["steps"]
    head = (
        f"Gain suite, {result['split']} draws {', '.join(map(str, result['draws']))}: "
        f"student mIoU (%) mean ± std over seeds {', '.join(map(str, result['seeds']))}; "
    )
    if not result.get("warm_start"):
        return head + (
            f"supervised {st['supervised']} steps, Dual Teacher {st['dual_teacher']} steps."
        )
    return head + (
        f"warm start: supervised {st['supervised']} steps, then from its final checkpoint "
        f"Dual Teacher {st['dual_teacher']} steps and, as the reference (sup final), "
        f"supervised {st['dual_teacher']} steps more; sup best: per seed the best validation "
        "of either supervised run."
    )


def _footnote(result: dict) -> str:
    return (
        "Paired differences: same seed, same data; mean, Student-t 95 % interval over seeds, "
        "per seed. Suite mean: mean of the per-dataset paired means, 95 % interval over the "
        "datasets (suite.json: also over all dataset x seed differences, ci95_pooled). Worst "
        "class: the class whose final IoU Dual Teacher lowers most against sup final, mean over "
        "seeds (suite row: the lowest of any dataset). std DT / sup final: the ratio of their "
        "standard deviations over seeds."
    )


def format_markdown(result: dict) -> str:
    cells = _cells(result)
    lines = [
        f"# Gain suite: {result['split']}",
        "",
        _caption(result),
        "",
        "| " + " | ".join(_HEAD) + " |",
        "|" + "---|" * len(_HEAD),
        *("| " + " | ".join(row) + " |" for row in cells),
        "",
        _footnote(result),
        "",
        "Against the bar:",
        "",
        *against_the_bar(result),
        "",
        f"Config `{result['config']}` with overrides `{' '.join(result['overrides']) or '-'}`.",
        "",
        "| dataset | classes | labelled / unlabelled / val | image px | character |",
        "|---|---|---|---|---|",
    ]
    for r in result["datasets"]:
        z = r["sizes"]
        lines.append(
            f"| {_row_name(r)} | {r['num_classes']} | {z['num_labeled']} / "
            f"{z['num_unlabeled']} / {z['num_val']} | {z['image_size']} | {r['character']} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- diagnosis
def _checkpoint(source: str | Path) -> Path:
    """A checkpoint file, or ``latest.pt`` of a run directory."""
    path = Path(source)
    if path.is_dir():
        path = path / "latest.pt"
    if not path.is_file():
        raise SystemExit(f"{source}: no checkpoint (give a .pt file or a run directory)")
    return path


def _share(counts, names: list[str]) -> dict[str, float]:
    total = max(int(counts.sum()), 1)
    return {n: 100 * int(c) / total for n, c in zip(names, counts)}


def _ratio(num, den, names: list[str]) -> dict[str, float | None]:
    return {n: (100 * int(a) / int(b) if b > 0 else None) for n, a, b in zip(names, num, den)}


def diagnose(
    source: str | Path,
    truth: str | Path,
    images: str | Path | None = None,
    models: str = "all",
    batch_size: int = 32,
    conf_thresh: float | None = None,
    device: str | None = None,
) -> dict:
    """Pseudo-labels of a checkpoint's models on the unlabelled images against the true masks.

    ``truth``: the dataset's ``truth/`` folder (``truth/unlabeled/<name>.png``); ``images``:
    the unlabelled images (default ``truth/../data/unlabeled``). Every model (``models``:
    ``all``, or names such as ``teacher_a,student``) predicts each whole image by the run's
    ``eval`` settings, in eval mode (as ``clean`` teachers do; ``faithful`` teachers label in
    train mode, and training labels random crops of the weak view, not whole images). A pixel's
    pseudo-label is the argmax; it is *confident* when its softmax maximum is >= the run's
    ``method.conf_thresh`` (or ``conf_thresh``). Per model, in percent:

    - ``iou`` / ``precision`` / ``recall`` per class of all pseudo-labels against the truth,
      and ``confident.*`` the same for the confident pixels only (precision: of the pixels
      confidently labelled c, truly c; recall: of the truly-c pixels, confidently labelled c);
      ``confused_with``: per true class, the other class that takes most of its pixels and
      the percent of its pixels it takes (``confident.confused_with``: confidently);
    - ``confident_ratio_by_true_class`` (of the truly-c pixels, the share with a confident
      pseudo-label: a class the loss starves has a low one) and
      ``confident_ratio_by_pseudo_class`` (of the pixels labelled c, the share confident);
    - ``balance``: the class shares of the truth, of all pseudo-labels and of the confident
      ones;
    - ``agreement_with_student`` (teachers): the share of pixels with the student's class.

    The softmax is the model's own: a run trained with ``distribution_alignment`` reweighted
    it by a running mean that lives in the method, not in the models, and is not applied here.
    """
    import torch
    from PIL import Image

    from dualteacher.metrics import ConfusionMatrix
    from dualteacher.serving.segmenter import load_segmenter

    ckpt = _checkpoint(source)
    truth_dir = Path(truth) / "unlabeled"
    image_dir = Path(images) if images else Path(truth).parent / "data" / "unlabeled"
    names = sorted(p.stem for p in truth_dir.glob("*.png"))
    if not names:
        raise SystemExit(f"{truth_dir}: no true masks (.png) found")
    seg = load_segmenter(ckpt, models=models, device=device or "cpu")
    k, classes = seg.num_classes, seg.classes
    thresh = seg.cfg.method.conf_thresh if conf_thresh is None else conf_thresh
    cms = {n: ConfusionMatrix(k) for n in seg.models}
    confident_cms = {n: ConfusionMatrix(k) for n in seg.models}
    pred_count = {n: torch.zeros(k, dtype=torch.int64) for n in seg.models}
    pred_conf = {n: torch.zeros(k, dtype=torch.int64) for n in seg.models}
    truth_conf = {n: torch.zeros(k, dtype=torch.int64) for n in seg.models}
    truth_count = torch.zeros(k, dtype=torch.int64)
    same = dict.fromkeys(seg.models, 0)
    pixels = 0
    with torch.no_grad():
        for start in range(0, len(names), batch_size):
            chunk = names[start : start + batch_size]
            ims = [np.array(Image.open(_image_of(image_dir, n)).convert("RGB")) for n in chunk]
            target = torch.from_numpy(
                np.stack([np.asarray(Image.open(truth_dir / f"{n}.png")) for n in chunk])
            ).long()
            x = seg.to_input(ims)
            truth_count += torch.bincount(target.flatten(), minlength=k)[:k]
            pixels += target.numel()
            labels = {}
            for name in seg.models:
                conf, pl = seg.logits(x, name).softmax(1).max(1)
                conf, pl = conf.cpu(), pl.cpu()
                labels[name] = pl
                confident = conf >= thresh
                cms[name].update(pl, target)
                confident_cms[name].update(pl, target.masked_fill(~confident, 255))
                pred_count[name] += torch.bincount(pl.flatten(), minlength=k)
                pred_conf[name] += torch.bincount(pl[confident], minlength=k)
                truth_conf[name] += torch.bincount(target[confident], minlength=k)[:k]
            if "student" in labels:
                for name, pl in labels.items():
                    same[name] += int((pl == labels["student"]).sum())
    out: dict = {
        "checkpoint": str(ckpt),
        "step": _step_of(ckpt),
        "images": len(names),
        "conf_thresh": thresh,
        "classes": classes,
        "truth_balance": _share(truth_count, classes),
        "models": {},
    }
    for name in seg.models:
        row = _scores(cms[name].mat, classes)
        row["confident"] = _scores(confident_cms[name].mat, classes, recall_of=truth_count)
        row["confident_share"] = 100 * int(pred_conf[name].sum()) / pixels
        row["confident_ratio_by_true_class"] = _ratio(truth_conf[name], truth_count, classes)
        row["confident_ratio_by_pseudo_class"] = _ratio(pred_conf[name], pred_count[name], classes)
        row["balance"] = {
            "truth": out["truth_balance"],
            "pseudo": _share(pred_count[name], classes),
            "confident_pseudo": _share(pred_conf[name], classes),
        }
        if "student" in seg.models and name != "student":
            row["agreement_with_student"] = 100 * same[name] / pixels
        out["models"][name] = row
    return out


def _image_of(folder: Path, name: str) -> Path:
    from dualteacher.data.files import IMAGE_EXTS

    for ext in IMAGE_EXTS:
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    raise SystemExit(f"no image {name}.* in {folder} for the true mask {name}.png")


def _step_of(ckpt: Path) -> int | None:
    from dualteacher.checkpoint import load_checkpoint

    return load_checkpoint(ckpt).get("step")


def _scores(mat, classes: list[str], recall_of=None) -> dict:
    """IoU, precision and recall per class (percent) from ``mat[target, pred]``; ``recall_of``:
    the true pixel count per class to divide by (default the matrix's own rows)."""
    mat = mat.double()
    tp, pred, true = mat.diag(), mat.sum(0), mat.sum(1)
    true_all = true if recall_of is None else recall_of.double()
    union = pred + true - tp

    def pct(a, b):
        return {n: (100 * float(x) / float(y) if y > 0 else None) for n, x, y in zip(classes, a, b)}

    iou = pct(tp, union)
    defined = [v for v in iou.values() if v is not None]
    # per true class, the other class that takes most of its pixels: (K, K) with the diagonal
    # out, row maximum -> (K,) counts and indices
    off = mat.clone().fill_diagonal_(-1)
    most, other = off.max(1)
    return {
        "miou": sum(defined) / len(defined) if defined else None,
        "iou": iou,
        "precision": pct(tp, pred),
        "recall": pct(tp, true_all),
        "confused_with": {
            n: ([classes[j], 100 * x / y] if y > 0 and x > 0 else None)
            for n, j, x, y in zip(classes, other.tolist(), most.tolist(), true_all.tolist())
        },
    }


def class_panel(
    data: str | Path,
    checkpoints: dict[str, str | Path],
    cls: str,
    out: str | Path,
    n: int = 6,
    device: str | None = None,
) -> dict:
    """Where one class's validation pixels go, for several checkpoints of one dataset.

    ``data``: a folder dataset (``val/images``, ``val/masks``, ``classes.yaml``: a suite
    dataset's ``data/``); ``checkpoints``: label -> checkpoint file or run directory. Draws to
    ``out`` (PNG) the ``n`` validation images where ``cls`` covers the most pixels: image, true
    mask and each checkpoint's student prediction, ``cls`` in yellow and the most common class
    in dark grey. Returns, per checkpoint over the whole validation set, ``cls``'s IoU,
    precision and recall (percent) and the class that takes most of its pixels with its share
    (``confused_with``), as ``diagnose`` scores them, and the images drawn."""
    import torch
    from PIL import Image

    from dualteacher.data.folder import read_classes
    from dualteacher.metrics import ConfusionMatrix
    from dualteacher.plots import default_palette, label_colors, plot_samples
    from dualteacher.serving.segmenter import load_segmenter

    data = Path(data)
    classes = read_classes(data / "classes.yaml")[0]
    if cls not in classes:
        raise SystemExit(f"{data / 'classes.yaml'}: no class {cls!r} (it has {', '.join(classes)})")
    k, target_id = len(classes), classes.index(cls)
    names = sorted(p.stem for p in (data / "val" / "masks").glob("*.png"))
    if not names:
        raise SystemExit(f"{data / 'val' / 'masks'}: no masks (.png) found")
    masks = np.stack([np.asarray(Image.open(data / "val" / "masks" / f"{m}.png")) for m in names])
    images = [
        np.array(Image.open(_image_of(data / "val" / "images", m)).convert("RGB")) for m in names
    ]
    counts = np.bincount(masks.ravel(), minlength=256)[:k]
    common = int(np.argmax(counts))  # the most common class: a background
    preds: dict[str, np.ndarray] = {}
    scores: dict[str, dict] = {}
    for label, source in checkpoints.items():
        ckpt = _checkpoint(source)
        seg = load_segmenter(ckpt, models="student", device=device or "cpu")
        if seg.classes != classes:
            raise SystemExit(f"{source}: trained on classes {seg.classes}, {data} has {classes}")
        with torch.no_grad():  # (N, H, W) class ids, 32 images per forward
            preds[label] = np.concatenate(
                [
                    seg.logits(seg.to_input(images[i : i + 32]), "student").argmax(1).cpu().numpy()
                    for i in range(0, len(images), 32)
                ]
            )
        cm = ConfusionMatrix(k)
        cm.update(torch.from_numpy(preds[label]), torch.from_numpy(masks).long())
        s = _scores(cm.mat, classes)
        scores[label] = {
            "checkpoint": str(ckpt),
            **{key: s[key][cls] for key in ("iou", "precision", "recall", "confused_with")},
        }
    # the n images with the most pixels of cls, most first
    order = np.argsort(-(masks == target_id).sum((1, 2)), kind="stable")[:n]
    lut = label_colors(default_palette(), k)
    lut[common], lut[target_id] = (60, 60, 60), (255, 215, 0)
    samples = [
        {
            "name": names[i],
            "image": images[i],
            "mask": masks[i],
            "preds": {label: p[i] for label, p in preds.items()},
        }
        for i in order
    ]
    plot_samples(samples, classes, lut, out)
    return {"class": cls, "images": [names[i] for i in order], "checkpoints": scores}


def format_panel(r: dict) -> str:
    lines = [f"{r['class']} on the validation images (student of each checkpoint):"]
    for label, s in r["checkpoints"].items():
        other = s["confused_with"]
        where = f", {other[1]:.1f} % of its pixels called {other[0]}" if other else ""
        lines.append(
            f"  {label}: IoU {_pct(s['iou'])}, precision {_pct(s['precision'])}, "
            f"recall {_pct(s['recall'])}{where}"
        )
    lines.append(f"  drawn: {', '.join(r['images'])}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_diagnosis(d: dict) -> str:
    """Per model, one line per class: IoU, precision/recall (all and confident), confident
    ratio, balance."""

    def f(v):
        return "   -" if v is None else f"{v:5.1f}"

    lines = [
        f"{d['checkpoint']} (step {d['step']}): {d['images']} unlabelled images, confidence "
        f">= {d['conf_thresh']}"
    ]
    for name, m in d["models"].items():
        extra = ""
        if "agreement_with_student" in m:
            extra = f", agrees with the student on {m['agreement_with_student']:.1f} % of pixels"
        lines += [
            "",
            f"{name}: pseudo-label mIoU {f(m['miou'])}, "
            f"confident mIoU {f(m['confident']['miou'])}, "
            f"confident pixels {m['confident_share']:.1f} %{extra}",
            f"  {'class':<16}{'IoU':>6}{'prec':>6}{'rec':>6}{'cIoU':>6}{'cprec':>6}{'crec':>6}"
            f"{'conf|true':>10}{'conf|pl':>8}{'truth%':>7}{'pl%':>6}{'cpl%':>6}"
            "  mostly mistaken for",
        ]
        for c in d["classes"]:
            b = m["balance"]
            lines.append(
                f"  {c:<16}{f(m['iou'][c]):>6}{f(m['precision'][c]):>6}{f(m['recall'][c]):>6}"
                f"{f(m['confident']['iou'][c]):>6}{f(m['confident']['precision'][c]):>6}"
                f"{f(m['confident']['recall'][c]):>6}"
                f"{f(m['confident_ratio_by_true_class'][c]):>10}"
                f"{f(m['confident_ratio_by_pseudo_class'][c]):>8}"
                f"{f(b['truth'][c]):>7}{f(b['pseudo'][c]):>6}{f(b['confident_pseudo'][c]):>6}"
                f"  {_confusion_text(m['confused_with'][c])}"
            )
    lines += [
        "",
        "IoU/prec/rec: all pseudo-labels against the truth; c*: confident pixels only (crec: of "
        "the truly-c pixels); conf|true: share of truly-c pixels that are confident; conf|pl: "
        "share of pixels labelled c that are confident; truth% / pl% / cpl%: class balance of "
        "the truth, of all and of the confident pseudo-labels; mostly mistaken for: the "
        "other class that takes most of the truly-c pixels, and their percent.",
    ]
    return "\n".join(lines)


def _confusion_text(pair: list | None) -> str:
    return "-" if pair is None else f"{pair[0]} {pair[1]:.1f} %"


# ----------------------------------------------------------------------------------------- CLI
def _sizes(args) -> dict:
    return {
        "image_size": args.image_size,
        "num_labeled": args.num_labeled,
        "num_unlabeled": args.num_unlabeled,
        "num_val": args.num_val,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["diagnose"]:
        p = argparse.ArgumentParser(
            prog="gain_suite.py diagnose", description=diagnose.__doc__.splitlines()[0]
        )
        p.add_argument(
            "checkpoint", help="a Dual Teacher checkpoint, or a run directory (latest.pt)"
        )
        p.add_argument("--truth", required=True, help="OUT/data/<name>_draw<seed>/truth")
        p.add_argument("--images", help="unlabelled images (default: TRUTH/../data/unlabeled)")
        p.add_argument("--models", default="all", help="all, or e.g. teacher_a,student")
        p.add_argument("--conf-thresh", type=float, help="default: the run's method.conf_thresh")
        p.add_argument("--device", help="default: cpu")
        p.add_argument("--json", help="also write the numbers to this file")
        a = p.parse_args(argv[1:])
        d = diagnose(
            a.checkpoint, a.truth, a.images, a.models, conf_thresh=a.conf_thresh, device=a.device
        )
        print(format_diagnosis(d))
        if a.json:
            Path(a.json).write_text(json.dumps(d, indent=2))
        return d
    if argv[:1] == ["panel"]:
        p = argparse.ArgumentParser(
            prog="gain_suite.py panel", description=class_panel.__doc__.splitlines()[0]
        )
        p.add_argument(
            "checkpoints",
            nargs="+",
            metavar="[LABEL=]CHECKPOINT",
            help="checkpoint files or run directories (latest.pt), each optionally labelled",
        )
        p.add_argument(
            "--data", required=True, help="the dataset's folder: OUT/data/<name>_draw<seed>/data"
        )
        p.add_argument("--class", dest="cls", required=True, help="the class to follow")
        p.add_argument("--out", required=True, help="the PNG to write")
        p.add_argument("--n", type=int, default=6, help="validation images drawn")
        p.add_argument("--device", help="default: cpu")
        a = p.parse_args(argv[1:])
        sources: dict[str, str] = {}
        for c in a.checkpoints:
            # LABEL=PATH, or the run's folder name (a .pt file's parent)
            label, path = c.split("=", 1) if "=" in c else (None, c)
            label = label or (Path(path).parent.name if path.endswith(".pt") else Path(path).name)
            if label in sources:
                p.error(f"two checkpoints labelled {label!r}: give LABEL=CHECKPOINT")
            sources[label] = path
        r = class_panel(a.data, sources, a.cls, a.out, n=a.n, device=a.device)
        print(format_panel(r))
        print(f"wrote {a.out}")
        return r
    if argv[:1] == ["table"]:
        p = argparse.ArgumentParser(
            prog="gain_suite.py table",
            description="Print a finished suite's table and its bar again (trains nothing)",
        )
        p.add_argument("suite_json", help="OUT/<split>/suite.json")
        a = p.parse_args(argv[1:])
        path = Path(a.suite_json)
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (give OUT/<split>/suite.json of a suite run)")
        result = json.loads(path.read_text())
        print(format_table(result))
        return result
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=list(DRAWS), help="which draws (DRAWS): required")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per method")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time (compare --jobs)")
    p.add_argument("--out", default="runs/gain_suite")
    p.add_argument("--datasets", help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--steps-sup", type=int, default=DEFAULT_STEPS_SUP)
    p.add_argument("--steps-dt", type=int, default=DEFAULT_STEPS_DT)
    p.add_argument("--config", default=BASE_CONFIG, help="base config (default: demo)")
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="Dual Teacher starts from supervised's final checkpoint and is measured against "
        "supervised continued for the same steps (compare rows A@B)",
    )
    p.add_argument("--image-size", type=int, help="every dataset's image side (default: its own)")
    p.add_argument("--num-labeled", type=int, help="labelled images of every dataset")
    p.add_argument("--num-unlabeled", type=int, help="unlabelled images of every dataset")
    p.add_argument("--num-val", type=int, help="validation images of every dataset")
    p.add_argument(
        "--supervised-from",
        metavar="OUT",
        help="reuse another suite's datasets and supervised runs (copied; same supervised "
        "steps and seeds, any Dual Teacher steps): screen a Dual Teacher setting or length "
        "against the same supervised runs",
    )
    p.add_argument("--list", action="store_true", help="list the datasets and draws, and stop")
    p.add_argument("overrides", nargs="*", help="config overrides key=value for every run")
    a = p.parse_args(argv)
    if a.list:
        for ds in DATASETS.values():
            print(
                f"{ds.name:<14}{len(ds.classes):>3} classes  {ds.num_labeled}/{ds.num_unlabeled}/"
                f"{ds.num_val} images of {ds.image_size} px  {ds.character}"
            )
        print(f"draws: {DRAWS}")
        return {}
    if a.split is None:
        p.error(f"--split is required: {' or '.join(DRAWS)} (tune on tuning only)")
    return run_suite(
        a.split,
        a.out,
        seeds=a.seeds,
        jobs=a.jobs,
        datasets=a.datasets,
        steps_sup=a.steps_sup,
        steps_dt=a.steps_dt,
        overrides=a.overrides,
        sizes=_sizes(a),
        config=a.config,
        warm_start=a.warm_start,
        supervised_from=a.supervised_from,
    )


if __name__ == "__main__":
    main()
