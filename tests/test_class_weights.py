"""method.class_weights: the rule that turns labelled pixel counts into loss weights, the count
itself, and the engine setting them on every method from the labelled masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualteacher.config import ClassWeights, load_config
from dualteacher.data.base import ArraySource
from dualteacher.data.check import labelled_stats
from dualteacher.engine.run import build_training
from dualteacher.methods.losses import class_weights

from .conftest import TINY


def test_sqrt_inverse_weights_from_counts():
    counts = np.array([993, 7, 0])
    w = class_weights(counts, ClassWeights.sqrt_inverse).numpy()
    # 1 / sqrt(frequency), relative: a 0.7 % class weighs sqrt(993 / 7) ~ 11.9x the surface
    assert w[1] / w[0] == pytest.approx(np.sqrt(993 / 7), rel=1e-5)
    assert w[2] == pytest.approx(w[1])  # no labelled pixel: the largest weight of the others
    # a labelled pixel weighs 1 on average: the loss keeps its scale
    assert (counts / counts.sum() * w).sum() == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(
        class_weights(np.array([5, 5, 5]), ClassWeights.sqrt_inverse), torch.ones(3)
    )
    assert class_weights(counts, ClassWeights.none) is None


def test_class_pixel_counts_reads_every_mask_without_ignore():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(4, 6, 5)).astype(np.uint8)
    masks[0, 0, :] = 255  # ignore is not a class
    images = np.zeros((4, 6, 5, 3), np.uint8)
    counts = labelled_stats(ArraySource(images, masks), 3).pixels
    expected = [int((masks == c).sum()) for c in range(3)]
    assert counts.tolist() == expected and sum(expected) == 4 * 30 - 5


@pytest.mark.parametrize("rule", ["none", "sqrt_inverse"])
def test_training_run_sets_the_weights_from_its_labelled_masks(tmp_path, rule):
    cfg = load_config(
        "demo", [*TINY, f"method.class_weights={rule}", f"train.out_dir={tmp_path / 'run'}"]
    )
    run = build_training(cfg, verbose=False)
    if rule == "none":
        assert run.method.class_weights is None
        return
    labeled = run.bundle.labeled
    counts = np.zeros(run.bundle.num_classes, np.int64)
    for i in range(len(labeled)):
        m = np.asarray(labeled.load(i).mask)
        counts += [(m == c).sum() for c in range(len(counts))]
    freq = counts / counts.sum()
    expected = 1 / np.sqrt(freq)
    expected /= (freq * expected).sum()
    np.testing.assert_allclose(run.method.class_weights.numpy(), expected, rtol=1e-5)
    # and the supervised loss uses them
    logits = torch.randn(1, run.bundle.num_classes, 4, 4)
    y = torch.randint(0, run.bundle.num_classes, (1, 4, 4))
    w = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(run.method.supervised_loss(logits, y), F.cross_entropy(logits, y, w))
