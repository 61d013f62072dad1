"""Registered models: forward/backward at small sizes, any input size, options, param groups."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from timm.layers import DropPath

from dualteacher.cli import main
from dualteacher.config import ModelConfig, OptimConfig, load_config
from dualteacher.engine.optim import param_groups
from dualteacher.errors import ConfigError
from dualteacher.methods import build_method
from dualteacher.models import MODELS, build_model, count_params, list_models

PAPER_MODELS = [
    "deeplabv3plus-r50",
    "deeplabv3plus-r101",
    *(f"segformer-b{i}" for i in range(6)),
    "dpt-dinov2-s",
    "dpt-dinov2-b",
]


def test_registry_has_the_paper_models():
    assert set(PAPER_MODELS) | {"unet-r18", "unet-effl0"} == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward(name):
    """Every model trains at a small, odd size (padded inside), with and without UniMatch's
    feature perturbation."""
    model = build_model(ModelConfig(name=name), 4)
    x = torch.randn(2, 3, 20, 30)  # not a multiple of any model's divisor
    logits = model(x)
    assert logits.shape == (2, 4, 20, 30) and torch.isfinite(logits).all()
    logits, logits_fp = model(x, feature_noise=nn.Dropout2d(0.5))
    assert logits_fp.shape == logits.shape == (2, 4, 20, 30)
    (logits.logsumexp(1).mean() + logits_fp.logsumexp(1).mean()).backward()
    head = [p for n, p in model.named_parameters() if not n.startswith("net.encoder.")]
    assert all(p.grad is not None for p in head)
    encoder = list(model.encoder.parameters())
    # (a block skipped by drop path for the whole batch gets a zero gradient, not None)
    with_grad = [p for p in encoder if p.grad is not None]
    # every encoder parameter is used (unused ImageNet layers are removed at build time)
    assert len(with_grad) == len(encoder)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("deeplabv3plus-r50", {}),
        ("deeplabv3plus-r50", {"output_stride": 8}),
        ("segformer-b0", {}),
        ("dpt-dinov2-s", {}),
    ],
)
def test_size_divisor_is_enough(name, overrides):
    """The raw network maps every multiple of ``size_divisor`` (odd multiples included, the
    tricky ones) to logits of exactly that size, so padding to it and cropping back is exact."""
    model = build_model(ModelConfig(name=name, **overrides), 3).eval()
    d = model.size_divisor
    with torch.no_grad():
        for h, w in [(d, 3 * d), (5 * d, 2 * d)]:
            net = model.net
            out = net.segmentation_head(net.decoder(net.encoder(torch.randn(1, 3, h, w))))
            assert out.shape[-2:] == (h, w)


def test_whole_voc_image_size():
    model = build_model(ModelConfig(name="segformer-b0"), 21).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 375, 500)).shape == (1, 21, 375, 500)


def test_output_stride():
    for stride in (16, 8):
        model = build_model(ModelConfig(name="deeplabv3plus-r50", output_stride=stride), 3)
        assert model.encoder(torch.randn(1, 3, 64, 64))[-1].shape[-1] == 64 // stride
    with pytest.raises(ConfigError, match="output_stride=32"):
        build_model(ModelConfig(name="deeplabv3plus-r50", output_stride=32), 3)
    with pytest.raises(ConfigError, match="deeplabv3plus-\\* models only"):
        build_model(ModelConfig(name="segformer-b0", output_stride=8), 3)
    cfg = load_config(None, ["model.name=deeplabv3plus-r101", "model.output_stride=8"])
    assert cfg.model.output_stride == 8


def test_segformer_head_matches_official_layout():
    net = build_model(ModelConfig(name="segformer-b1"), 150).net
    assert [m.linear.out_features for m in net.decoder.mlp_stage] == [256] * 4
    assert net.decoder.fuse_stage[0].out_channels == 256
    assert isinstance(net.segmentation_head[0], nn.Dropout2d)
    assert net.segmentation_head[0].p == 0.1
    assert net.segmentation_head[1].out_channels == 150


def test_teachers_have_no_drop_path():
    cfg = load_config(
        "demo", ["model.name=segformer-b0", "model.pretrained=null", "data.batch_size=2"]
    )

    def make_model():
        return build_model(cfg.model, 5)

    method = build_method(cfg, make_model(), make_model)

    def rates(m):
        return [d.drop_prob for d in m.modules() if isinstance(d, DropPath)]

    assert max(rates(method.student)) == pytest.approx(0.1)  # MiT default, as official
    assert all(max(rates(t)) == 0.0 for t in method.teachers)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model.*segformer-b1"):
        build_model(ModelConfig(name="segformer-b9"), 3)


def test_list_models_counts_parameters(capsys):
    rows = list_models(21, names=["unet-r18", "segformer-b0", "dpt-dinov2-s"])
    built = build_model(ModelConfig(name="dpt-dinov2-s"), 21)
    assert rows[2]["params_m"] * 1e6 == sum(p.numel() for p in built.parameters())
    assert count_params("segformer-b0") == sum(
        p.numel() for p in build_model(ModelConfig(name="segformer-b0"), 21).parameters()
    )
    main(["models", "unet-r18", "segformer-b0", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["unet-r18", "segformer-b0"]
    assert listed[1]["size_divisor"] == 32 and 3.6 < listed[1]["params_m"] < 3.8
    main(["models", "segformer-b0"])
    assert "segformer-b0" in capsys.readouterr().out


# ------------------------------------------------------------------------- parameter groups
def _groups(model, **optim):
    return {g["name"]: g for g in param_groups(model, OptimConfig(**optim))}


def test_param_groups_backbone_and_head_lr():
    model = build_model(ModelConfig(name="segformer-b0"), 3)
    groups = _groups(model, name="sgd", lr=0.01, head_lr_mult=10.0, weight_decay=1e-4)
    assert set(groups) == {"backbone", "head"}
    assert groups["backbone"]["lr"] == 0.01 and groups["head"]["lr"] == pytest.approx(0.1)
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())  # SGD decays everything
    encoder = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == encoder
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_adamw_skips_decay_on_norms_biases_and_position_embeddings():
    model = build_model(ModelConfig(name="dpt-dinov2-s"), 3)
    groups = _groups(model, name="adamw", lr=1e-4, head_lr_mult=10.0, weight_decay=0.01)
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {
        names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]
    }
    vit = "net.encoder.model."
    for n in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert vit + n in no_decay
    assert vit + "blocks.0.ls1.gamma" in no_decay  # layer scale: 1-D
    assert vit + "blocks.0.attn.qkv.weight" not in no_decay
    assert vit + "patch_embed.proj.weight" not in no_decay
    params = dict(model.named_parameters())
    head_no_decay = [n for n in no_decay if not n.startswith(vit)]  # decoder BN and biases
    assert head_no_decay and all(params[n].ndim == 1 for n in head_no_decay)
    assert groups["head_no_decay"]["lr"] == pytest.approx(1e-3)
