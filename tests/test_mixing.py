import torch

from dualteacher.methods.mixing import (
    classmix_mask,
    cutmix_box_mask,
    mix,
    partner_permutation,
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
