"""data.strong.colour=auto: the colour separability of the labelled set, the rule that turns it
into the strong view's hue and greyscale, and the engine giving the training loaders that view."""

from __future__ import annotations

import numpy as np
import pytest

import dualteacher.engine.run as run_module
from dualteacher.config import StrongAugConfig, StrongColour, load_config
from dualteacher.data.base import ArraySource
from dualteacher.data.check import LabelledStats, labelled_stats
from dualteacher.data.transforms import COLOUR_CUE, strong_for_colour
from dualteacher.engine.run import build_training

from .conftest import TINY


def _images(colours, rng, n=6, size=16):
    """``n`` images, left half class 0, right half class 1; ``colours(rng)`` gives each half's
    base RGB; brightness varies per pixel so that only chromaticity can separate colours."""
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, :, size // 2 :] = 1
    for i in range(n):
        left, right = colours(rng)
        shade = rng.uniform(0.3, 1.0, (size, size, 1))  # brightness, not colour
        base = np.where(masks[i][..., None] == 0, left, right)  # (size, size, 3)
        images[i] = (base * shade).astype(np.uint8)
    return images, masks


def test_colour_separability_is_1_for_colour_classes_0_for_grey_and_random_colours():
    rng = np.random.default_rng(0)
    red, green = np.array([200, 40, 40]), np.array([40, 200, 40])
    by_colour = ArraySource(*_images(lambda r: (red, green), rng))
    assert labelled_stats(by_colour, 2).colour_separability() == pytest.approx(1.0)
    grey = ArraySource(*_images(lambda r: (np.full(3, 150), np.full(3, 150)), rng))
    assert labelled_stats(grey, 2).colour_separability() == 0.0  # every pixel (1/3, 1/3): chance
    # each half a random colour, whatever its class: near chance
    random = ArraySource(*_images(lambda r: r.integers(30, 255, (2, 3)), rng, n=40))
    assert labelled_stats(random, 2).colour_separability() < 0.2
    # ignore pixels and classes beyond num_classes are not counted; one class left: 0
    images, masks = _images(lambda r: (red, green), rng)
    masks[:, :, 8:] = 255
    assert labelled_stats(ArraySource(images, masks), 2).colour_separability() == 0.0


def test_the_rule_keeps_a_colour_cue_and_varies_colour_otherwise():
    cfg = StrongAugConfig(colour=StrongColour.auto, hue=0.1, grayscale_p=0.5, blur_p=0.3)
    kept = strong_for_colour(cfg, COLOUR_CUE)
    assert (kept.hue, kept.grayscale_p, kept.colour) == (0.0, 0.0, StrongColour.fixed)
    varied = strong_for_colour(cfg, COLOUR_CUE - 0.01)
    assert (varied.hue, varied.grayscale_p) == (0.25, 0.2)  # UniMatch's
    assert kept.blur_p == varied.blur_p == 0.3  # the rest as set


@pytest.mark.parametrize(("score", "hue"), [(None, 0.0), (0.1, 0.25)])
def test_training_loaders_get_the_resolved_view(tmp_path, monkeypatch, score, hue):
    """On the demo data (each class its colour) the rule keeps colour; a low score varies it.
    The run's config keeps `auto` (a resumed run resolves it again from the same data)."""
    if score is not None:
        monkeypatch.setattr(LabelledStats, "colour_separability", lambda self: score)
    overrides = ["method.dual_teacher.mode=clean", "data.strong.colour=auto", "data.strong.hue=0.1"]
    cfg = load_config("demo", [*TINY, *overrides, f"train.out_dir={tmp_path / 'run'}"])
    run = build_training(cfg, verbose=False)
    assert run.cfg.data.strong.colour == StrongColour.auto
    assert run.train_data.strong.hue == hue
    seen = []
    monkeypatch.setattr(run_module, "build_train_loaders", lambda b, data, **kw: seen.append(data))
    run.batches()
    assert seen[0].strong.hue == hue and seen[0].strong.grayscale_p == (0.0 if hue == 0 else 0.2)
    # colour fixed: the view as written
    fixed = ["method.dual_teacher.mode=clean", "data.strong.colour=fixed", "data.strong.hue=0.1"]
    cfg = load_config("demo", [*TINY, *fixed])
    cfg.train.out_dir = str(tmp_path / "fixed")
    assert build_training(cfg, verbose=False).train_data.strong.hue == 0.1
