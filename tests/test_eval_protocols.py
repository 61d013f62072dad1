"""Evaluation protocols: whole, sliding and resize inference, and scoring under DDP striding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dualteacher.config import EvalConfig, EvalMode, load_config
from dualteacher.data.base import EvalSet, Sample, SegSource
from dualteacher.engine import evaluate as ev
from dualteacher.engine.trainer import build_run
from dualteacher.errors import ConfigError
from dualteacher.metrics import ConfusionMatrix
from dualteacher.models import SegModel

K = 4


class _PixelNet(nn.Module):
    """smp-style net whose logits at a pixel depend on that pixel only (a fixed 1x1 conv)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Identity()
        self.head = nn.Conv2d(3, K, 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(K, 3, 1, 1, generator=g))
            self.head.bias.copy_(torch.randn(K, generator=g))

    def decoder(self, features):
        return features

    def segmentation_head(self, x):
        return self.head(x)


class _CountingModel(nn.Module):
    """Records the input sizes it sees (to check the windows)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def pixel_model() -> SegModel:
    # divisor 16: inputs that are not multiples of it are padded and the logits cropped back
    return SegModel(_PixelNet(), 16, "pixel", K).eval()


@pytest.mark.parametrize(
    ("size", "crop", "stride", "starts"),
    [
        (20, 32, 21, [0]),  # smaller than the crop: one window
        (32, 32, 21, [0]),
        (50, 32, 21, [0, 18]),  # the last window ends at the border
        (75, 32, 21, [0, 21, 42, 43]),
        (96, 32, 32, [0, 32, 64]),
    ],
)
def test_window_starts_cover_every_pixel_inside_the_image(size, crop, stride, starts):
    got = ev.window_starts(size, crop, stride)
    assert got == starts
    covered = np.zeros(size, bool)
    for s in got:
        assert s >= 0 and s + min(crop, size) <= size
        covered[s : s + crop] = True
    assert covered.all()


@pytest.mark.parametrize(("h", "w"), [(20, 27), (37, 70), (64, 96), (33, 17)])
def test_sliding_equals_whole_for_a_pixelwise_model(h, w):
    model = pixel_model()
    image = torch.randn(2, 3, h, w)
    whole = ev.predict_logits(model, image, EvalConfig(mode=EvalMode.whole), K)
    counting = _CountingModel(model)
    cfg = EvalConfig(mode=EvalMode.sliding, crop_size=32, stride=21, batch_size=3)
    sliding = ev.predict_logits(counting, image, cfg, K)
    assert sliding.shape == whole.shape == (2, K, h, w)
    torch.testing.assert_close(sliding, whole, rtol=1e-5, atol=1e-5)
    n = len(ev.window_starts(h, 32, 21)) * len(ev.window_starts(w, 32, 21))
    # windows go 3 at a time through the model, each window for both images
    assert sum(s[0] for s in counting.shapes) == 2 * n
    assert all(s[2:] == (min(h, 32), min(w, 32)) for s in counting.shapes)


def test_resize_mode_returns_logits_at_the_input_size():
    model = pixel_model()
    image = torch.randn(1, 3, 30, 45)
    cfg = EvalConfig(mode=EvalMode.resize, short_side=30)
    # already at the short side: the same as whole-image inference
    torch.testing.assert_close(
        ev.predict_logits(model, image, cfg, K),
        ev.predict_logits(model, image, EvalConfig(mode=EvalMode.whole), K),
    )
    counting = _CountingModel(model)
    for short, seen in [(64, (64, 96)), (20, (20, 30)), (17, (17, 26))]:
        out = ev.predict_logits(
            counting, image, EvalConfig(mode=EvalMode.resize, short_side=short), K
        )
        assert out.shape == (1, K, 30, 45) and torch.isfinite(out).all()
        assert counting.shapes[-1][2:] == seen
    # a constant image stays constant through resizing: same logits as whole
    flat = torch.ones(1, 3, 30, 45) * torch.tensor([0.3, -1.0, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        ev.predict_logits(model, flat, EvalConfig(mode=EvalMode.resize, short_side=50), K),
        ev.predict_logits(model, flat, EvalConfig(mode=EvalMode.whole), K),
    )


def test_sliding_rejects_a_stride_larger_than_the_window():
    cfg = EvalConfig(mode=EvalMode.sliding, crop_size=32, stride=40)
    with pytest.raises(ConfigError, match="eval.stride=40"):
        ev.predict_logits(pixel_model(), torch.randn(1, 3, 80, 80), cfg, K)
    # caught before training starts, not at the first validation
    cfg = load_config("demo", ["eval.mode=sliding", "eval.crop_size=32", "eval.stride=40"])
    with pytest.raises(ConfigError, match="eval.stride=40"):
        build_run(cfg)


def _val_set(n: int = 5) -> EvalSet:
    """``n`` images of several sizes; masks from a rule the model half follows."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(n):
        h, w = 24 + 7 * i, 40 - 3 * i
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = (img[..., 0] // 64).astype(np.uint8)
        mask[:2] = 255
        images.append(img)
        masks.append(mask)

    return EvalSet(_ListSource(images, masks), load_config(None, []).data)


class _ListSource(SegSource):
    """Images of different sizes (``ArraySource`` holds one stacked array)."""

    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def load(self, index):
        return Sample(self.images[index], self.masks[index], f"v{index}")


@pytest.mark.parametrize("mode", ["whole", "sliding", "resize"])
def test_ddp_ranks_score_every_image_once(mode):
    model, ds = pixel_model(), _val_set(5)
    cfg = EvalConfig(mode=EvalMode(mode), crop_size=16, stride=11, short_side=20, batch_size=2)
    cpu = torch.device("cpu")
    single = ev.confusion_matrix(model, ds, K, cfg, cpu)
    parts = [ev.confusion_matrix(model, ds, K, cfg, cpu, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(parts[0].mat + parts[1].mat, single.mat)
    labelled = sum(int((ds[i]["mask"] != 255).sum()) for i in range(len(ds)))
    assert int(single.mat.sum()) == labelled  # every pixel of every image, once
    assert 0 < int(parts[1].mat.sum()) < labelled  # rank 1 scored its share (images 1 and 3)
    assert int(parts[1].mat.sum()) == sum(int((ds[i]["mask"] != 255).sum()) for i in (1, 3))


def test_evaluate_sums_rank_matrices_through_all_reduce(monkeypatch):
    """``evaluate`` on rank 0 of 2 with the all-reduce standing in for rank 1's matrix."""
    model, ds = pixel_model(), _val_set(5)
    cfg = EvalConfig(mode=EvalMode.sliding, crop_size=16, stride=11)
    cpu = torch.device("cpu")
    other = ev.confusion_matrix(model, ds, K, cfg, cpu, rank=1, world_size=2)
    # the all-reduce of rank 0 adds what rank 1 contributes
    monkeypatch.setattr(ConfusionMatrix, "all_reduce", lambda self: self.mat.add_(other.mat))
    reduced = ev.evaluate(model, ds, K, cfg, cpu, rank=0, world_size=2)
    monkeypatch.undo()
    single = ev.evaluate(model, ds, K, cfg, cpu)
    assert reduced.num_pixels == single.num_pixels
    assert reduced.miou == pytest.approx(single.miou) and reduced.acc == pytest.approx(single.acc)
    whole = ev.evaluate(model, ds, K, EvalConfig(mode=EvalMode.whole), cpu)
    assert whole.miou == pytest.approx(single.miou)  # a pixelwise model: protocols agree
