"""Model registry: plain dict of name -> builder, on segmentation-models-pytorch and timm.

Every registered model is wrapped in ``SegModel``, which takes images of any size (padding to
the multiple the network needs and cropping the logits back) and exposes the encoder/decoder
split that feature-perturbation methods need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from dualteacher.config import ModelConfig
from dualteacher.errors import ConfigError
from dualteacher.models.segmodel import SegModel


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, ModelConfig], nn.Module]  # (num_classes, cfg) -> smp-style network
    size_divisor: int  # input sides must be multiples of this
    description: str


def _unet_r18(num_classes: int, cfg: ModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp

    # A small U-Net: ResNet-18 encoder cut after stage 3 (stride 16), narrow decoder. Trains
    # at a few steps per second on a laptop CPU at 64 px: the demo model.
    return smp.Unet(
        "resnet18",
        encoder_depth=4,
        encoder_weights=None,
        decoder_channels=(64, 32, 16, 8),
        classes=num_classes,
    )


MODELS: dict[str, ModelSpec] = {
    "unet-r18": ModelSpec(_unet_r18, 16, "U-Net, ResNet-18 encoder (depth 4), CPU demo model"),
}


def build_model(cfg: ModelConfig, num_classes: int) -> SegModel:
    """Build the model named by ``cfg.name`` for ``num_classes`` classes."""
    if cfg.name not in MODELS:
        raise ConfigError(
            f"unknown model model.name={cfg.name!r}. Available: {', '.join(MODELS)} "
            "(`dualteacher models` lists them with sizes)"
        )
    spec = MODELS[cfg.name]
    return SegModel(spec.build(num_classes, cfg), spec.size_divisor, cfg.name, num_classes)


def list_models(num_classes: int = 21) -> list[dict]:
    """Every registered model with its parameter count (built once each, on the CPU)."""
    rows = []
    for name, spec in MODELS.items():
        net = spec.build(num_classes, ModelConfig(name=name))
        n = sum(p.numel() for p in net.parameters())
        rows.append({"name": name, "params_m": n / 1e6, "description": spec.description})
    return rows


__all__ = ["MODELS", "ModelSpec", "SegModel", "build_model", "list_models"]
