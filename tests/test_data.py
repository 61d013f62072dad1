import itertools

import numpy as np
import torch

from dualteacher.config import DemoDataConfig, load_config
from dualteacher.data import build_data
from dualteacher.data.base import ArraySource, LabeledTrainSet, UnlabeledTrainSet
from dualteacher.data.demo import CLASSES, generate
from dualteacher.data.loaders import StreamSampler


def test_demo_is_deterministic_disjoint_and_has_all_classes():
    cfg = DemoDataConfig(num_labeled=6, num_unlabeled=10, num_val=6, image_size=32, seed=3)
    a_img, a_mask = generate(cfg, "labeled")
    b_img, b_mask = generate(cfg, "labeled")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    other, _ = generate(DemoDataConfig(num_labeled=6, image_size=32, seed=4), "labeled")
    assert not np.array_equal(a_img, other)
    splits = {s: generate(cfg, s)[0] for s in ("labeled", "unlabeled", "val")}
    seen = {}
    for s, imgs in splits.items():
        for img in imgs:
            key = img.tobytes()
            assert key not in seen, f"an image of {s} is also in {seen.get(key)}"
            seen[key] = s
    big = DemoDataConfig(num_val=60, image_size=32, seed=0)
    _, masks = generate(big, "val")
    assert set(np.unique(masks)) == set(range(len(CLASSES)))
    assert len(CLASSES) >= 4


def test_unlabelled_demo_set_has_no_masks():
    bundle = build_data(load_config("demo", ["data.demo.num_unlabeled=4"]).data)
    assert bundle.unlabeled.load(0).mask is None
    assert bundle.labeled.load(0).mask is not None


def _block_sample(h=48, w=80, block=16):
    """Image of constant blocks whose red channel encodes the block's class."""
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, size=(h // block, w // block))
    mask = np.kron(classes, np.ones((block, block), np.int64)).astype(np.uint8)
    image = np.stack([mask * 40 + 20, mask * 0 + 100, mask * 10], -1).astype(np.uint8)
    return image, mask


def test_weak_view_keeps_image_and_mask_aligned():
    image, mask = _block_sample()
    cfg = load_config(None, ["data.crop_size=32", "data.scale_range=[0.5,2.0]"]).data
    ds = LabeledTrainSet(ArraySource(image[None], mask[None]), cfg)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    for seed in range(20):
        out = ds[(0, seed)]
        assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
        red = ((out["image"] * std + mean)[0] * 255).round()
        m = out["mask"]
        labelled = m != 255
        # Inside a block (colour equal to all 4 neighbours, so not an interpolated edge) the
        # colour must encode the pixel's class.
        r = torch.nn.functional.pad(red, (1, 1, 1, 1), value=-1)
        flat = (r[1:-1, 1:-1] == r[:-2, 1:-1]) & (r[1:-1, 1:-1] == r[2:, 1:-1])
        flat &= (r[1:-1, 1:-1] == r[1:-1, :-2]) & (r[1:-1, 1:-1] == r[1:-1, 2:])
        exact = labelled & flat
        assert exact.sum() > 20
        assert torch.equal(((red[exact] - 20) / 40).long(), m[exact])
        # Padding: mask ignore where the image is zero-padded (normalised 0 -> -mean/std).
        pad = ~labelled
        if pad.any():
            assert torch.allclose(out["image"][:, pad], (-mean / std).expand(3, 32, 32)[:, pad])


def test_same_seed_same_augmentation_and_strong_view():
    image, _mask = _block_sample(24, 40, 8)
    cfg = load_config(None, ["data.crop_size=48"]).data
    ds = UnlabeledTrainSet(ArraySource(image[None], None), cfg, with_strong=True)
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(0, 6)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"]) or not torch.equal(a["image_s"], c["image_s"])
    # 24x40 image in a 48 crop: padding is flagged, and the weak and strong views share it
    assert a["ignore"].any() and not a["ignore"].all()
    assert a["image"].shape == a["image_s"].shape == (3, 48, 48)


def test_stream_sampler_resumes_exactly_and_splits_ranks():
    full = list(itertools.islice(iter(StreamSampler(10, seed=1, stream=1)), 35))
    tail = list(itertools.islice(iter(StreamSampler(10, seed=1, stream=1, start=12)), 23))
    assert full[12:] == tail
    # each pass of 10 draws is a permutation
    for p in range(3):
        assert sorted(i for i, _ in full[10 * p : 10 * p + 10]) == list(range(10))
    # two ranks split every pass without overlap
    r0 = list(itertools.islice(iter(StreamSampler(10, 1, 1, rank=0, world_size=2)), 5))
    r1 = list(itertools.islice(iter(StreamSampler(10, 1, 1, rank=1, world_size=2)), 5))
    assert sorted(i for i, _ in r0 + r1) == list(range(10))
    assert [i for i, _ in r0] == [i for i, _ in full[0:10:2]]


def test_second_strong_view_is_independent_and_leaves_the_first_unchanged():
    image, _mask = _block_sample(24, 40, 8)
    cfg = load_config(None, ["data.crop_size=48"]).data
    one = UnlabeledTrainSet(ArraySource(image[None], None), cfg, with_strong=True)
    two = UnlabeledTrainSet(ArraySource(image[None], None), cfg, with_strong=True, num_strong=2)
    differs = []
    for seed in range(5):
        a, b = one[(0, seed)], two[(0, seed)]
        assert set(b) == {"image", "image_s", "image_s2", "ignore"}
        # Same weak crop, padding and first strong view whether one or two are asked for.
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert b["image_s2"].shape == b["image_s"].shape
        differs.append(not torch.equal(b["image_s"], b["image_s2"]))
    assert sum(differs) >= 4  # independent draws (both may skip every op, rarely)


def test_official_padding_is_bottom_right_with_the_mean_colour_and_ignore():
    """Dual Teacher faithful (mmseg Pad): a crop never larger than the image, padded on the
    bottom and right after normalisation, image 0 (the mean colour), mask ignore."""
    image, mask = _block_sample(24, 40, 8)  # crop 32: rows are padded, columns cropped
    cfg = load_config(None, ["data.crop_size=32", "data.scale_range=[1.0,1.0]"]).data
    labelled = LabeledTrainSet(ArraySource(image[None], mask[None]), cfg, official_pad=True)
    unlabelled = UnlabeledTrainSet(ArraySource(image[None], None), cfg, True, official_pad=True)
    for seed in range(6):
        out = labelled[(0, seed)]
        assert out["image"].shape == (3, 32, 32)
        assert (out["mask"][24:] == 255).all() and (out["mask"][:24] != 255).all()
        assert (out["image"][:, 24:] == 0).all() and (out["image"][:, :24] != 0).any(0).all()
        u = unlabelled[(0, seed)]
        assert torch.equal(u["ignore"], out["mask"] == 255)  # same crop, same padding
        for key in ("image", "image_s"):
            assert (u[key][:, 24:] == 0).all() and u[key].shape == (3, 32, 32)


def test_default_padding_is_black_at_a_random_offset():
    image, mask = _block_sample(24, 40, 8)
    cfg = load_config(None, ["data.crop_size=32", "data.scale_range=[1.0,1.0]"]).data
    ds = LabeledTrainSet(ArraySource(image[None], mask[None]), cfg)
    first_rows = set()
    for seed in range(12):
        pad = ds[(0, seed)]["mask"] == 255
        assert pad.sum() == 8 * 32  # 24 image rows in a crop of 32
        first_rows.add(int((~pad).any(1).nonzero().min()))
    assert len(first_rows) > 2  # the image lands at random offsets, not always at the top
