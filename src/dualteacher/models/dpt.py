"""DPT head on a DINOv2 encoder: timm's ViT/14 plus segmentation-models-pytorch's DPT pieces.

UniMatch V2 (Yang et al., 2025) segments with Depth Anything's DPT head on DINOv2 features:
four intermediate blocks (2, 5, 8, 11) of the ViT, each normalised by the ViT's final
LayerNorm, are reassembled from the 1/14 patch grid to 4x, 2x, 1x and 1/2x that grid, fused
top-down with 2x upsampling, and the logits resized to the input. ``smp.DPT`` itself assumes
the reassembly factors ``stride / 4, stride / 8, ...`` of a patch-16 ViT, which for patch 14
gives non-integer factors and the feature-size mismatch seen with
``smp.DPT("tu-vit_small_patch14_dinov2")``. Here the same smp decoder is built as for stride 16
(factors 4, 2, 1, 1/2: exactly UniMatch V2's reassembly of the patch grid) and the head
upsamples by 1.75 instead of 2 (8/14 of the input -> the input).

Channel widths follow UniMatch V2: ViT-S 48/96/192/384 reassembled, 64 fused; ViT-B
96/192/384/768, 128 fused. Differences from UniMatch V2's head (both from smp's decoder):
its residual units have BatchNorm (UniMatch V2: none); the fusion block applies its second
residual unit before the 2x upsampling and a 1x1 projection after it, as DPT does; the
classifier has BatchNorm and dropout 0.1 before the last 1x1 conv. Class tokens are ignored
(``readout="ignore"``), as in UniMatch V2. Position embeddings are interpolated to the input
grid by timm (``dynamic_img_size``).

Input sides must be multiples of 28: the patch grid (side / 14) is halved once and upsampled
back, so it must be even.
"""

from __future__ import annotations

import torch
import torch.nn as nn

DINOV2 = {  # size -> (timm name, reassembled widths, fused width); UniMatch V2's settings
    "s": ("vit_small_patch14_dinov2", (48, 96, 192, 384), 64),
    "b": ("vit_base_patch14_dinov2", (96, 192, 384, 768), 128),
}
BLOCKS = (2, 5, 8, 11)  # intermediate blocks fed to the head (UniMatch V2, ViT-S and ViT-B)
PATCH = 14


class ViTFeatures(nn.Module):
    """Encoder adapter: image ``(B, 3, H, W)`` -> four ``(B, C, H/14, W/14)`` maps."""

    def __init__(self, model: nn.Module, blocks: tuple[int, ...] = BLOCKS):
        super().__init__()
        self.model = model  # timm VisionTransformer: its state dict is the DINOv2 layout
        self.blocks = list(blocks)
        # Blocks after the last used one and the classifier head are never run: drop them so
        # every parameter gets a gradient (DDP) and the optimizer holds no dead weights.
        model.prune_intermediate_layers(self.blocks, prune_norm=False, prune_head=True)
        self.out_channels = [model.embed_dim] * len(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # norm=True: the final LayerNorm on every intermediate, as DINOv2's
        # get_intermediate_layers (used by UniMatch V2) does.
        return self.model.forward_intermediates(
            x, indices=self.blocks, norm=True, intermediates_only=True
        )


class DPTDecoderNoPrefix(nn.Module):
    """smp's ``DPTDecoder`` called with feature maps only (class tokens ignored)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features, [None] * len(features))


class EncoderDecoder(nn.Module):
    """The ``.encoder / .decoder / .segmentation_head`` layout ``SegModel`` drives."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, segmentation_head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


def build_dpt_dinov2(size: str, num_classes: int, hub: bool = False) -> EncoderDecoder:
    """DPT on DINOv2 ViT-``size``/14 (``"s"`` or ``"b"``); ``hub`` downloads timm's DINOv2."""
    # timm and smp are slow to import (seconds): only when a DPT model is built
    import timm
    from segmentation_models_pytorch.decoders.dpt.decoder import (
        DPTDecoder,
        DPTSegmentationHead,
    )

    timm_name, widths, fused = DINOV2[size]
    vit = timm.create_model(
        timm_name + (".lvd142m" if hub else ""),
        pretrained=hub,
        dynamic_img_size=True,  # any multiple of 14, position embeddings interpolated
        num_classes=0,
    )
    encoder = ViTFeatures(vit)
    decoder = DPTDecoder(
        encoder_out_channels=encoder.out_channels,
        # Claimed stride 16 -> reassembly factors 16/4, 16/8, 16/16, 16/32 of the patch grid
        # = 4, 2, 1, 1/2: UniMatch V2's (see the module docstring).
        encoder_output_strides=[16] * len(BLOCKS),
        encoder_has_prefix_tokens=False,
        readout="ignore",
        intermediate_channels=widths,
        fusion_channels=fused,
    )
    # The decoder ends at 8x the patch grid = 8/14 of the input; 1.75 = 14/8 brings the logits
    # back to the input size (exactly: sides are multiples of 28).
    head = DPTSegmentationHead(fused, num_classes, kernel_size=3, upsampling=PATCH / 8)
    return EncoderDecoder(encoder, DPTDecoderNoPrefix(decoder), head)
