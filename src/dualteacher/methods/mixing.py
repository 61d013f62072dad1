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
