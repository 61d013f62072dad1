"""``SegModel``: any-size wrapper around an encoder / decoder / head segmentation network."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SegModel(nn.Module):
    """Images ``(B, 3, H, W)`` of any size -> logits ``(B, K, H, W)``.

    The wrapped ``net`` follows segmentation-models-pytorch's layout: ``net.encoder(x)`` gives a
    list of feature maps, ``net.decoder(features)`` a decoded map, ``net.segmentation_head``
    the logits at input resolution. Inputs are padded on the bottom/right with zeros (the
    normalised mean colour) to a multiple of ``size_divisor`` and the logits cropped back, so
    classic 321/513 crops and whole images of any size work.
    """

    def __init__(self, net: nn.Module, size_divisor: int, name: str, num_classes: int):
        super().__init__()
        self.net = net
        self.size_divisor = size_divisor
        self.name = name
        self.num_classes = num_classes

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def disable_drop_path(self) -> SegModel:
        """Turn stochastic depth off (MiT, ViT blocks), as the official Dual Teacher code builds
        its teachers (``mit_bX_ema``: drop_path_rate 0); teachers may predict in train mode."""
        from timm.layers import DropPath  # slow (timm, seconds): teachers of timm models only

        for m in self.modules():
            if isinstance(m, DropPath):
                m.drop_prob = 0.0
        return self

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        # An ONNX export records the padding as arithmetic on the input's shape (always
        # applied, a no-op at multiples of d), so the exported graph takes any size.
        exporting = torch.onnx.is_in_onnx_export()
        return F.pad(x, (0, pw, 0, ph)) if exporting or ph or pw else x

    def forward(self, x: torch.Tensor, feature_noise: nn.Module | None = None):
        """Logits for ``x``.

        With ``feature_noise`` (e.g. ``nn.Dropout2d(0.5)``, UniMatch's feature perturbation),
        returns ``(logits, logits_fp)``: the decoder also runs on perturbed copies of every
        encoder feature map (not of the input image), in the same batch, so BatchNorm layers
        of the decoder see clean and perturbed features together, as in UniMatch.
        """
        h, w = x.shape[-2:]
        padded = self._pad(x)
        features = self.net.encoder(padded)
        if feature_noise is None:
            logits = self.net.segmentation_head(self.net.decoder(features))
            return logits[..., :h, :w]
        b = x.shape[0]
        # (2B, C_i, h_i, w_i) per level: clean features, then their perturbed copies. smp
        # encoders return the input image itself as level 0: it is repeated unperturbed, so
        # the noise touches features only (UniMatch perturbs the features its decoder reads).
        both = [
            torch.cat([f, f if f is padded else feature_noise(f)]) if f.dim() == 4 else f
            for f in features
        ]
        logits = self.net.segmentation_head(self.net.decoder(both))[..., :h, :w]
        return logits[:b], logits[b:]
