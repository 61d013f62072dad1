"""Model registry: plain dict of name -> builder, on segmentation-models-pytorch and timm.

Every registered model is wrapped in ``SegModel``, which takes images of any size (padding to
the multiple the network needs and cropping the logits back) and exposes the encoder/decoder
split that feature-perturbation methods need. ``model.pretrained`` loads encoder weights from a
local file (``dualteacher.models.weights``) into every model built, students and teachers.

Registered (``dualteacher models`` lists them with parameter counts):

- ``deeplabv3plus-r50`` / ``-r101``: smp DeepLabV3+ on a torchvision-layout ResNet, plain
  (non-separable) ASPP, output stride 16 (8 selectable); inputs padded to multiples of 16;
- ``segformer-b0`` ... ``-b5``: smp SegFormer, MiT encoder, MLP decoder of width 256, dropout
  0.1 before the classifier; multiples of 32;
- ``dpt-dinov2-s`` / ``-b``: timm DINOv2 ViT/14 with smp's DPT decoder pieces, sized as in
  UniMatch V2 (``models/dpt.py``); multiples of 28;
- ``unet-r18``: the small CPU demo model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from dualteacher.config import ModelConfig
from dualteacher.errors import CheckpointError, ConfigError, DualTeacherError
from dualteacher.models.segmodel import SegModel
from dualteacher.models.weights import BUNDLED, HUB, Family, bundled_weights, load_encoder_weights

# DeepLab's atrous rates per output stride: (6, 12, 18) at 16, doubled at 8 (DeepLabV3 paper;
# UniMatch / U2PL use the same).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
SEGFORMER_WIDTH = 256  # decoder width of the official SegFormer / Dual Teacher code


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, ModelConfig], nn.Module]  # (num_classes, cfg) -> smp-style network
    size_divisor: int  # input sides must be multiples of this
    description: str
    family: Family = Family.resnet  # encoder layout, for model.pretrained (see weights.py)
    uses_output_stride: bool = False  # model.output_stride applies


def _hub(cfg: ModelConfig) -> bool:
    return cfg.pretrained == HUB


def _unet_r18(num_classes: int, cfg: ModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp  # slow (seconds): only when built

    # A small U-Net: ResNet-18 encoder cut after stage 3 (stride 16), narrow decoder. Trains
    # at a few steps per second on a laptop CPU at 64 px: the demo model.
    net = smp.Unet(
        "resnet18",
        encoder_depth=4,
        encoder_weights="imagenet" if _hub(cfg) else None,
        decoder_channels=(64, 32, 16, 8),
        classes=num_classes,
    )
    del net.encoder.layer4  # depth 4 never runs it: no dead weights to average or all-reduce
    return net


def _unet_effl0(num_classes: int, cfg: ModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp  # slow (seconds): only when built

    # U-Net on EfficientNet-Lite0 (TF "same" padding, as the converted ImageNet weights need):
    # the demo model. 3.4 M encoder parameters with real ImageNet weights available offline
    # (model.pretrained: bundled); depthwise convolutions keep it near unet-r18's CPU cost.
    net = smp.Unet(
        "timm-tf_efficientnet_lite0",
        encoder_weights="imagenet" if _hub(cfg) else None,
        decoder_channels=(96, 48, 32, 16, 16),
        classes=num_classes,
    )
    # The ImageNet head's 1x1 conv and its BN are never run by the U-Net: drop them.
    del net.encoder.conv_head, net.encoder.bn2
    return net


def _deeplabv3plus(resnet: str) -> Callable[[int, ModelConfig], nn.Module]:
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        import segmentation_models_pytorch as smp  # slow (seconds): only when built

        output_stride = cfg.output_stride or 16
        if output_stride not in ATROUS_RATES:
            raise ConfigError(
                f"model.output_stride={cfg.output_stride} is not supported by {cfg.name}: "
                "use 16 (default, UniMatch) or 8 (U2PL; ~4x the decoder compute)"
            )
        # smp's ASPP branches are separable convolutions by default; the DeepLabV3+ of the
        # semi-supervised papers (UniMatch, U2PL, torchvision) uses plain 3x3 atrous convs.
        return smp.DeepLabV3Plus(
            resnet,
            encoder_weights="imagenet" if _hub(cfg) else None,
            encoder_output_stride=output_stride,
            decoder_atrous_rates=ATROUS_RATES[output_stride],
            decoder_aspp_separable=False,
            classes=num_classes,
        )

    return build


def _segformer(variant: str) -> Callable[[int, ModelConfig], nn.Module]:
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        import segmentation_models_pytorch as smp  # slow (seconds): only when built

        net = smp.Segformer(
            f"mit_{variant}",
            encoder_weights="imagenet" if _hub(cfg) else None,
            decoder_segmentation_channels=SEGFORMER_WIDTH,
            classes=num_classes,
        )
        # The official head applies Dropout2d(0.1) to the fused 256-channel map before the
        # 1x1 classifier; smp's head is conv + upsample only.
        net.segmentation_head.insert(0, nn.Dropout2d(0.1))
        return net

    return build


def _dpt_dinov2(size: str) -> Callable[[int, ModelConfig], nn.Module]:
    def build(num_classes: int, cfg: ModelConfig) -> nn.Module:
        from dualteacher.models.dpt import build_dpt_dinov2  # timm, slow: only when built

        return build_dpt_dinov2(size, num_classes, hub=_hub(cfg))

    return build


MIT_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")

MODELS: dict[str, ModelSpec] = {
    "unet-r18": ModelSpec(_unet_r18, 16, "U-Net, ResNet-18 encoder (depth 4), small CPU model"),
    "unet-effl0": ModelSpec(
        _unet_effl0,
        32,
        "U-Net, EfficientNet-Lite0 encoder (ImageNet weights bundled): the CPU demo model",
        family=Family.efficientnet,
    ),
    "deeplabv3plus-r50": ModelSpec(
        _deeplabv3plus("resnet50"),
        16,
        "DeepLabV3+, ResNet-50, plain ASPP, output stride 16 (8 selectable)",
        uses_output_stride=True,
    ),
    "deeplabv3plus-r101": ModelSpec(
        _deeplabv3plus("resnet101"),
        16,
        "DeepLabV3+, ResNet-101, plain ASPP, output stride 16 (8 selectable): the paper's "
        "VOC / Cityscapes model",
        uses_output_stride=True,
    ),
    **{
        f"segformer-{v}": ModelSpec(
            _segformer(v),
            32,
            f"SegFormer, MiT-{v.upper()} encoder, MLP decoder width 256"
            + (": the paper's ADE20K model" if v == "b1" else ""),
            family=Family.mit,
        )
        for v in MIT_VARIANTS
    },
    "dpt-dinov2-s": ModelSpec(
        _dpt_dinov2("s"),
        28,
        "DPT head on DINOv2 ViT-S/14 (UniMatch V2's model)",
        family=Family.vit,
    ),
    "dpt-dinov2-b": ModelSpec(
        _dpt_dinov2("b"),
        28,
        "DPT head on DINOv2 ViT-B/14 (UniMatch V2's model)",
        family=Family.vit,
    ),
}


@contextmanager
def _one_thread():
    """Weight initialisation is elementwise and memory-bound: one thread is as fast, and on a
    machine whose cores are busy much faster than waiting for OpenMP workers (measured on 2
    shared cores: SegFormer MiT-B2 built in 1.0 s with 1 thread, 6.6 s with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_model(cfg: ModelConfig, num_classes: int, *, verbose: bool = True) -> SegModel:
    """Build the model named by ``cfg.name`` for ``num_classes`` classes, with the encoder
    weights of ``cfg.pretrained`` if set.

    Raises:
        ConfigError: unknown name, or an option the model does not have.
        CheckpointError: ``cfg.pretrained`` is unreadable or made for another architecture.
    """
    if cfg.name not in MODELS:
        raise ConfigError(
            f"unknown model model.name={cfg.name!r}. Available: {', '.join(MODELS)} "
            "(`dualteacher models` lists them with sizes)"
        )
    spec = MODELS[cfg.name]
    if cfg.output_stride is not None and not spec.uses_output_stride:
        raise ConfigError(
            f"model.output_stride applies to the deeplabv3plus-* models only, not {cfg.name}; "
            "remove it (set model.output_stride=null)"
        )
    try:
        with _one_thread():
            net = spec.build(num_classes, cfg)
    except Exception as e:
        if cfg.pretrained != HUB or isinstance(e, DualTeacherError):
            raise
        raise CheckpointError(
            f"model.pretrained=hub: getting the weights of {cfg.name} failed "
            f"({type(e).__name__}: {e}). Offline, download them on another machine and set "
            "model.pretrained=PATH to the file"
        ) from e
    model = SegModel(net, spec.size_divisor, cfg.name, num_classes)
    if cfg.pretrained and cfg.pretrained != HUB:
        path = bundled_weights(cfg.name) if cfg.pretrained == BUNDLED else cfg.pretrained
        load_encoder_weights(model, path, spec.family, verbose=verbose)
    return model


def count_params(name: str, num_classes: int = 21) -> int:
    """Parameters of model ``name``; built on the meta device when the model allows it."""
    spec = MODELS[name]
    try:
        with torch.device("meta"):
            net = spec.build(num_classes, ModelConfig(name=name))
    except RuntimeError:  # some constructors call .item() (MiT's drop-path schedule)
        with _one_thread():
            net = spec.build(num_classes, ModelConfig(name=name))
    return sum(p.numel() for p in net.parameters())


def list_models(num_classes: int = 21, names: list[str] | None = None) -> list[dict]:
    """Registered models (all, or ``names``) with their parameter counts for ``num_classes``."""
    return [
        {
            "name": name,
            "params_m": count_params(name, num_classes) / 1e6,
            "size_divisor": MODELS[name].size_divisor,
            "description": MODELS[name].description,
        }
        for name in names or MODELS
    ]


__all__ = ["MODELS", "ModelSpec", "SegModel", "build_model", "count_params", "list_models"]
