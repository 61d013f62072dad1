"""Running a network on a normalised image of any size by the ``eval`` settings: the whole
image, sliding windows (averaged logits) or resized to a short side. Validation
(``engine.evaluate``) and serving (``serving.segmenter``) both call ``predict_logits``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dualteacher.config import EvalConfig, EvalMode
from dualteacher.errors import ConfigError


def check_eval_config(cfg: EvalConfig) -> None:
    """Raise ``ConfigError`` for settings that cannot work (checked before training starts)."""
    if cfg.mode == EvalMode.sliding and not 0 < cfg.stride <= cfg.crop_size:
        raise ConfigError(
            f"eval.stride={cfg.stride} must be between 1 and eval.crop_size={cfg.crop_size}: a "
            "larger stride leaves pixels that no window covers"
        )
    if cfg.mode == EvalMode.resize and cfg.short_side < 1:
        raise ConfigError(f"eval.short_side={cfg.short_side} must be a positive number of pixels")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Offsets of windows of ``crop`` every ``stride`` pixels along a side of ``size``; the
    last window is moved back to end at the border (mmseg's convention), so every pixel is
    covered and no window leaves the image. A side shorter than ``crop`` gets one window."""
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def _sliding(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    crop: int,
    stride: int,
    windows_per_forward: int = 1,
) -> torch.Tensor:
    """Average logits over windows of ``crop`` every ``stride`` pixels.

    ``image`` (B, 3, H, W) -> logits (B, K, H, W). Windows are cut from the image as they are
    (a side shorter than ``crop`` gives a shorter window; the model pads to its divisor) and
    ``windows_per_forward`` of them go through the model in one batch.
    """
    check_eval_config(EvalConfig(mode=EvalMode.sliding, crop_size=crop, stride=stride))
    b, _, h, w = image.shape
    logits = torch.zeros(b, num_classes, h, w, dtype=torch.float32, device=image.device)
    count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=image.device)
    boxes = [
        (y0, x0, min(y0 + crop, h), min(x0 + crop, w))
        for y0 in window_starts(h, crop, stride)
        for x0 in window_starts(w, crop, stride)
    ]
    for i in range(0, len(boxes), max(1, windows_per_forward)):
        chunk = boxes[i : i + max(1, windows_per_forward)]
        # (len(chunk) * B, 3, h_win, w_win): all windows of an image have the same size
        out = model(torch.cat([image[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk])).float()
        for j, (y0, x0, y1, x1) in enumerate(chunk):
            logits[:, :, y0:y1, x0:x1] += out[j * b : (j + 1) * b]
            count[:, :, y0:y1, x0:x1] += 1
    return logits / count


@torch.no_grad()
def predict_logits(
    model: nn.Module, image: torch.Tensor, cfg: EvalConfig, num_classes: int
) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` at the input's resolution for normalised ``image`` (B, 3, H, W)."""
    h, w = image.shape[-2:]
    if cfg.mode == EvalMode.whole:
        return model(image).float()
    if cfg.mode == EvalMode.sliding:
        return _sliding(model, image, num_classes, cfg.crop_size, cfg.stride, cfg.batch_size)
    # resize: short side to cfg.short_side, predict, upsample the logits to the input size
    scale = cfg.short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    logits = model(small).float()
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
