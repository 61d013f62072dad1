"""CutMix and ClassMix for segmentation, as small pure functions.

A mixing mask ``(B, H, W)`` bool says, per pixel, whether the value comes from the image
itself or from its partner ``perm[k]``; ``mix`` applies one mask to any per-pixel tensor
(images, pseudo-labels, confidences, probabilities), so they always move together.
"""

from __future__ import annotations

import math

import torch


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where ``mask`` else ``b``. ``mask`` is ``(B, H, W)``; ``a``/``b`` are ``(B, H, W)``
    or ``(B, C, H, W)``."""
    if a.dim() == 4:
        mask = mask.unsqueeze(1)
    return torch.where(mask, a, b)


def cutmix_box_mask(
    batch: int, height: int, width: int, beta: float = 4.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One box per image, True inside. Official Dual Teacher sampling (``rand_bbox_1``).

    The area ratio ``lam ~ Beta(beta, beta)`` is drawn once per batch and each side is
    ``sqrt(1 - lam)`` of the image side; each box centre is uniform in ``[H/8, H) x [W/8, W)``
    and the box is clipped to the image. Randomness comes from torch's global RNG (saved in
    checkpoints). Returns ``(B, H, W)`` bool.
    """
    lam = float(torch.distributions.Beta(beta, beta).sample())
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = torch.randint(height // 8, height, (batch,))
    cx = torch.randint(width // 8, width, (batch,))
    ys = torch.arange(height).view(1, -1, 1)
    xs = torch.arange(width).view(1, 1, -1)
    y0, y1 = (cy - cut_h // 2).clamp(0, height), (cy + cut_h // 2).clamp(0, height)
    x0, x1 = (cx - cut_w // 2).clamp(0, width), (cx + cut_w // 2).clamp(0, width)
    inside_y = (ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1))
    inside_x = (xs >= x0.view(-1, 1, 1)) & (xs < x1.view(-1, 1, 1))
    return (inside_y & inside_x).to(device)


def unimatch_box_mask(
    batch: int,
    height: int,
    width: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One box per image, True inside, or no box. UniMatch's sampling (``obtain_cutmix_box``).

    Unlike ``cutmix_box_mask`` every image draws its own box: with probability ``p`` it gets
    one, of area ``U(area) * H * W`` and aspect ratio ``h / w ~ U(aspect)``, at a top-left
    corner uniform over the image; corner and aspect are re-drawn until the box fits inside
    (no clipping). Sides are rounded down. Randomness comes from torch's global RNG.
    Returns ``(B, H, W)`` bool.
    """
    box = torch.zeros(batch, height, width, dtype=torch.bool)
    for k in range(batch):
        if float(torch.rand(())) >= p:
            continue
        size = float(torch.empty(()).uniform_(*area)) * height * width
        while True:  # terminates: a near-square box at a corner near (0, 0) always fits
            ratio = float(torch.empty(()).uniform_(*aspect))
            cut_h, cut_w = int(math.sqrt(size * ratio)), int(math.sqrt(size / ratio))
            y0, x0 = int(torch.randint(height, ())), int(torch.randint(width, ()))
            if y0 + cut_h <= height and x0 + cut_w <= width:
                break
        box[k, y0 : y0 + cut_h, x0 : x0 + cut_w] = True
    return box.to(device)


def partner_permutation(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Mixing partners within a batch: ``perm[k]`` is image ``k``'s partner, never ``k``
    itself when ``batch > 1``.

    A random cyclic order (shuffle the batch, each image's partner is the next one), so every
    image is a partner exactly once. Returns ``(B,)`` long.
    """
    order = torch.randperm(batch)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm.to(device)


def shuffled_partners(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Mixing partners as the official Dual Teacher CutMix draws them: ``perm = randperm(B)``,
    so an image may be its own partner (then its CutMix box pastes nothing new).
    Returns ``(B,)`` long."""
    return torch.randperm(batch).to(device)


def classmix_partners(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """ClassMix partners of the official Dual Teacher code: the other image for a batch of two
    (``[1, 0]``), else ``randperm(B)``. Returns ``(B,)`` long."""
    if batch == 2:
        return torch.tensor([1, 0], device=device)
    return torch.randperm(batch).to(device)


def classmix_mask(pseudo_label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """ClassMix: per image, half (rounded down) of the classes it shows, chosen at random.

    ``pseudo_label`` is ``(B, H, W)`` int; returns ``(B, H, W)`` bool, True on the pixels of the
    chosen classes (those stay; the rest comes from the partner image).
    """
    masks = []
    for pl in pseudo_label:
        classes = torch.unique(pl)
        classes = classes[classes != ignore_index]
        n = classes.numel()
        chosen = classes[torch.randperm(n, device=classes.device)[: n // 2]]
        masks.append(torch.isin(pl, chosen))
    return torch.stack(masks)
