import functools

import torch

from dualteacher.methods.mixing import (
    classmix_mask,
    classmix_partners,
    cutmix_box_mask,
    mix,
    partner_permutation,
    shuffled_partners,
    unimatch_box_mask,
)


def _coded_batch(b=4, h=16, w=16):
    """Images whose every pixel encodes (image index, y, x), and labels = image index."""
    idx = torch.arange(b).view(b, 1, 1, 1).float()
    yy = torch.arange(h).view(1, 1, h, 1).float().expand(b, 1, h, w)
    xx = torch.arange(w).view(1, 1, 1, w).float().expand(b, 1, h, w)
    images = torch.cat([idx.expand(b, 1, h, w), yy, xx], 1)  # (B, 3, H, W)
    labels = idx.view(b, 1, 1).expand(b, h, w).long()
    conf = (idx.view(b, 1, 1) / 10).expand(b, h, w)
    return images, labels, conf


def test_cutmix_moves_pixels_labels_and_confidence_together():
    torch.manual_seed(0)
    images, labels, conf = _coded_batch()
    box = cutmix_box_mask(4, 16, 16, beta=4.0)
    perm = torch.tensor([1, 2, 3, 0])
    x = mix(box, images[perm], images)
    y = mix(box, labels[perm], labels)
    c = mix(box, conf[perm], conf)
    # The source image of every pixel (channel 0) equals its label and its confidence * 10,
    # and pixels keep their position (channels 1, 2).
    assert torch.equal(x[:, 0].long(), y)
    assert torch.allclose(c * 10, y.float())
    assert torch.equal(x[:, 1:], images[:, 1:])
    for k in range(4):
        assert set(y[k][box[k]].unique().tolist()) <= {int(perm[k])}
        assert set(y[k][~box[k]].unique().tolist()) <= {k}


def test_cutmix_box_is_one_rectangle_of_official_size():
    torch.manual_seed(1)
    box = cutmix_box_mask(64, 32, 32, beta=4.0)
    areas = box.flatten(1).float().mean(1)
    assert (areas < 1).all()
    for b in box:
        if b.any():
            rows, cols = b.any(1).nonzero(), b.any(0).nonzero()
            r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
            assert b[r0 : r1 + 1, c0 : c1 + 1].all()  # filled rectangle
            assert b.sum() == (r1 - r0 + 1) * (c1 - c0 + 1)
    # lam ~ Beta(4, 4) has mean 1/2, so boxes cover ~ (1 - lam) of the image before clipping
    assert 0.05 < areas.mean() < 0.6


def test_classmix_takes_half_of_the_classes_of_each_image():
    torch.manual_seed(0)
    pl = torch.zeros(2, 8, 8, dtype=torch.long)
    pl[0, :, :2], pl[0, :, 2:4], pl[0, :, 4:6], pl[0, :, 6:] = 0, 1, 2, 3
    pl[1, :4], pl[1, 4:] = 5, 255  # one real class and ignore
    keep = classmix_mask(pl, ignore_index=255)
    chosen0 = pl[0][keep[0]].unique()
    assert len(chosen0) == 2  # floor(4 / 2) classes, each kept whole
    for c in chosen0:
        assert keep[0][pl[0] == c].all()
    assert not keep[1].any()  # floor(1 / 2) = 0 classes; ignore is never chosen
    images, labels, _ = _coded_batch(2, 8, 8)
    perm = torch.tensor([1, 0])
    x, y = mix(keep, images, images[perm]), mix(keep, labels, labels[perm])
    assert torch.equal(x[:, 0].long(), y)


def test_unimatch_box_is_one_unclipped_rectangle_of_published_size():
    torch.manual_seed(0)
    h, w = 96, 128
    box = unimatch_box_mask(300, h, w, p=0.5)
    has_box = box.flatten(1).any(1)
    assert 0.4 < has_box.float().mean() < 0.6  # p = 0.5 per image
    areas, corners = [], []
    for b in box[has_box]:
        rows, cols = b.any(1).nonzero(), b.any(0).nonzero()
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        bh, bw = int(r1 - r0 + 1), int(c1 - c0 + 1)
        assert b.sum() == bh * bw  # one filled rectangle
        # area U(0.02, 0.4) of the image and h / w in U(0.3, 1 / 0.3), up to rounding down
        assert 0.02 * 0.85 <= bh * bw / (h * w) <= 0.4
        assert 0.3 * 0.9 <= bh / bw <= 1 / 0.3 * 1.1
        areas.append(bh * bw / (h * w))
        corners.append((int(r0), int(c0)))
    # Never clipped: the mean area stays that of U(0.02, 0.4), 0.21 (clipping would shrink it).
    assert 0.18 < sum(areas) / len(areas) < 0.24
    r0s, c0s = zip(*corners)  # top-left corners spread over the image
    assert min(r0s) < h / 8 and max(r0s) > h / 2 and min(c0s) < w / 8 and max(c0s) > w / 2
    assert torch.equal(unimatch_box_mask(4, h, w, p=0.0), torch.zeros(4, h, w, dtype=torch.bool))
    assert unimatch_box_mask(8, h, w, p=1.0).flatten(1).any(1).all()


def test_partner_permutation_never_pairs_an_image_with_itself():
    torch.manual_seed(0)
    seen = set()
    for b in (2, 3, 5, 8):
        for _ in range(20):
            perm = partner_permutation(b)
            assert sorted(perm.tolist()) == list(range(b))  # every image a partner once
            assert (perm != torch.arange(b)).all()
            seen.add(tuple(perm.tolist()))
    assert len(seen) > 10  # random, not one fixed derangement
    assert partner_permutation(1).tolist() == [0]


def _rows_cols(b):
    """``(y0, y1, x0, x1)`` of a box mask's rectangle (end exclusive)."""
    rows, cols = b.any(1).nonzero().flatten(), b.any(0).nonzero().flatten()
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


@functools.cache
def _cutmix_draws(batches=300, b=8, size=128):
    """Per batch: the box side (from the boxes that no border clips) and every box centre that
    can be read back (a side clipped on at most one end)."""
    torch.manual_seed(0)
    sides, centres = [], []
    for _ in range(batches):
        box = cutmix_box_mask(b, size, size, beta=4.0)
        edges = [_rows_cols(m) for m in box]
        whole = {y1 - y0 for y0, y1, _, _ in edges if y0 > 0 and y1 < size}
        whole |= {x1 - x0 for _, _, x0, x1 in edges if x0 > 0 and x1 < size}
        assert len(whole) <= 1, "boxes of one batch differ in size: lam is drawn per image"
        if not whole:
            continue
        side = whole.pop()
        sides.append(side)
        for y0, y1, x0, x1 in edges:
            for lo, hi in ((y0, y1), (x0, x1)):
                if lo > 0:
                    centres.append(lo + side // 2)
                elif hi < size:
                    centres.append(hi - side // 2)
    return torch.tensor(sides, dtype=torch.float), torch.tensor(centres, dtype=torch.float)


def test_cutmix_box_area_is_one_beta_4_4_draw_per_batch():
    """Official rand_bbox_1: lam ~ Beta(4, 4) once per batch, side = sqrt(1 - lam) * size."""
    sides, _ = _cutmix_draws()
    assert len(sides) > 250
    one_minus_lam = (sides / 128) ** 2
    # Beta(4, 4): mean 1/2, sd 1/6 (Beta(2, 2): 0.22, Beta(8, 8): 0.12, U(0, 1): 0.29)
    assert 0.45 < one_minus_lam.mean() < 0.53
    assert 0.145 < one_minus_lam.std() < 0.19


def test_cutmix_box_centre_is_uniform_from_one_eighth_to_the_border():
    """Official: centre ~ U[H/8, H) x U[W/8, W), so boxes hang over the bottom/right border
    more often than the top/left one."""
    _, centres = _cutmix_draws()
    assert centres.min() == 128 // 8
    assert centres.max() == 127
    assert abs(centres.mean() - (16 + 127) / 2) < 3


def test_official_partners():
    torch.manual_seed(0)
    cutmix = [tuple(shuffled_partners(4).tolist()) for _ in range(60)]
    assert all(sorted(p) == [0, 1, 2, 3] for p in cutmix)
    assert len(set(cutmix)) > 10  # random: randperm(B)
    assert (0, 1, 2, 3) in cutmix  # an image may be its own partner (official CutMix)
    # ClassMix: the other image of a pair, else randperm(B)
    assert all(classmix_partners(2).tolist() == [1, 0] for _ in range(10))
    classmix = [tuple(classmix_partners(3).tolist()) for _ in range(40)]
    assert all(sorted(p) == [0, 1, 2] for p in classmix) and len(set(classmix)) > 3
