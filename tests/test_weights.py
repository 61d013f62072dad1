"""model.pretrained: every supported file format, written by the tests, and the mismatch errors."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from dualteacher.config import ModelConfig, load_config
from dualteacher.errors import CheckpointError
from dualteacher.methods import build_method
from dualteacher.models import build_model
from dualteacher.models.weights import Family, describe, load_encoder_weights, read_state_dict


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name), 3)


def _assert_loaded(encoder: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    checked = [k for k in own if k in sd]
    assert len(checked) > 0.95 * len(own)
    for k in checked:
        assert torch.equal(own[k], sd[k].to(own[k].dtype)), k


# --------------------------------------------------------------------------------- ResNet
def test_torchvision_resnet_state_dict(tmp_path, capsys):
    sd = torchvision.models.resnet18(weights=None).state_dict()  # the layout of resnet18-*.pth
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(sd, path)
    model = _model("unet-r18")
    report = load_encoder_weights(model, path, Family.resnet)
    _assert_loaded(model.encoder, sd)
    # fc is ImageNet's classifier; unet-r18 stops after layer3 and has no layer4
    assert {k.split(".")[0] for k in report.dropped} == {"fc", "layer4"}
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == report.expected and report.looks_like == "ResNet-18"
    assert "pretrained: loaded" in capsys.readouterr().out


def test_timm_resnet_as_safetensors(tmp_path):
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "model.safetensors"  # the file timm's hub ships
    save_file(sd, str(path))
    model = _model("unet-r18")
    report = load_encoder_weights(model, path, Family.resnet)
    _assert_loaded(model.encoder, sd)
    assert report.missing == [] and report.unexpected == []


def test_wrapped_and_prefixed_checkpoint(tmp_path):
    """A training checkpoint: {"state_dict": {"module.backbone.*": ..., decode head ...}}."""
    sd = torchvision.models.resnet18(weights=None).state_dict()
    wrapped = {f"module.backbone.{k}": v for k, v in sd.items()}
    wrapped["module.decode_head.conv.weight"] = torch.zeros(3, 8, 1, 1)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(wrapped)
    model = _model("unet-r18")
    report = load_encoder_weights(model, path, Family.resnet)
    _assert_loaded(model.encoder, sd)
    assert report.prefix == "module.backbone." and report.ignored == 1


def test_resnet50_file_into_resnet101_model_is_an_error(tmp_path):
    # Same widths, fewer blocks: no shape differs, but most of layer3 would stay random.
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = build_model(ModelConfig(name="deeplabv3plus-r101"), 3)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(model, path, Family.resnet)
    msg = str(err.value)
    assert str(path) in msg and "missing" in msg
    assert "looks like a ResNet-50 checkpoint" in msg
    assert "model.name=deeplabv3plus-r101 has a ResNet-101 encoder" in msg


def test_resnet_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    model = build_model(ModelConfig(name="deeplabv3plus-r50"), 3)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(model, path, Family.resnet)
    msg = str(err.value)
    assert str(path) in msg
    assert "'layer1.0.conv1.weight' has shape (64, 64, 3, 3) in the file but (64, 64, 1, 1)" in msg
    assert "ResNet-18 checkpoint" in msg and "ResNet-50 encoder" in msg


def test_deeper_file_and_truncated_file_are_errors(tmp_path):
    model = _model("unet-r18")
    deeper = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), deeper)
    with pytest.raises(CheckpointError, match=r"unexpected.*ResNet-34 checkpoint"):
        load_encoder_weights(model, deeper, Family.resnet)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    truncated = tmp_path / "r50_no_layer4.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer4")}, truncated)
    with pytest.raises(
        CheckpointError, match=r"missing.*looks like a ResNet-50 without layer4 checkpoint"
    ):
        load_encoder_weights(_model("deeplabv3plus-r50"), truncated, Family.resnet)


def test_deep_stem_resnet_is_recognised(tmp_path):
    path = tmp_path / "resnet18d.pth"
    torch.save(timm.create_model("resnet18d", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match="deep-stem ResNet"):
        load_encoder_weights(_model("unet-r18"), path, Family.resnet)


def test_few_missing_keys_load_with_a_report(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer3.1.bn2.weight"], sd["layer3.1.bn2.bias"]
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    report = load_encoder_weights(_model("unet-r18"), path, Family.resnet)
    assert report.missing == ["layer3.1.bn2.weight", "layer3.1.bn2.bias"]
    assert "missing: layer3.1.bn2.weight" in report.summary()


# ------------------------------------------------------------------------------------ MiT
def _official_mit(variant_model: str, seed: int) -> dict[str, torch.Tensor]:
    """An official ``mit_bX.pth``: MiT encoder keys plus the ImageNet head."""
    sd = _model(variant_model, seed).encoder.state_dict()
    width = sd["norm4.weight"].shape[0]
    return {**sd, "head.weight": torch.randn(1000, width), "head.bias": torch.zeros(1000)}


def test_official_mit_checkpoint(tmp_path):
    sd = _official_mit("segformer-b0", seed=1)
    assert "patch_embed1.proj.weight" in sd and "block1.0.attn.q.weight" in sd
    path = tmp_path / "mit_b0.pth"
    torch.save(sd, path)
    model = _model("segformer-b0", seed=0)
    report = load_encoder_weights(model, path, Family.mit)
    _assert_loaded(model.encoder, sd)
    assert report.dropped == ["head.bias", "head.weight"] and report.looks_like == "MiT-B0"


def test_mit_b0_file_into_b1_model_is_an_error(tmp_path):
    path = tmp_path / "mit_b0.pth"
    torch.save(_official_mit("segformer-b0", seed=1), path)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(_model("segformer-b1"), path, Family.mit)
    msg = str(err.value)
    assert str(path) in msg and "has shape" in msg
    assert "looks like a MiT-B0 checkpoint, but model.name=segformer-b1 has a MiT-B1" in msg


def test_file_of_another_family_is_an_error(tmp_path):
    path = tmp_path / "mit_b0.safetensors"
    save_file(_official_mit("segformer-b0", seed=1), str(path))
    with pytest.raises(CheckpointError, match="MiT-B0 checkpoint.*unet-r18 has a ResNet-18"):
        load_encoder_weights(_model("unet-r18"), path, Family.resnet)


# ----------------------------------------------------------------------------------- DINOv2
def _official_dinov2(seed: int) -> dict[str, torch.Tensor]:
    """An official ``dinov2_vits14_pretrain.pth``: timm's names plus the iBOT mask token."""
    sd = _model("dpt-dinov2-s", seed).encoder.model.state_dict()
    return {**sd, "mask_token": torch.zeros(1, 384)}


def test_official_dinov2_checkpoint(tmp_path):
    sd = _official_dinov2(seed=1)
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # 518 px grid
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    model = _model("dpt-dinov2-s", seed=0)
    report = load_encoder_weights(model, path, Family.vit)
    _assert_loaded(model.encoder.model, sd)
    assert report.missing == [] and report.unexpected == []
    assert report.looks_like == "ViT-S/14"
    # DINOv2 "with registers" is another architecture: a clear error, not a partial load.
    reg = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save({**sd, "register_tokens": torch.zeros(1, 4, 384)}, reg)
    with pytest.raises(CheckpointError, match="ViT-S/14 with registers checkpoint"):
        load_encoder_weights(model, reg, Family.vit)


def test_dinov2_position_embedding_is_resampled(tmp_path):
    sd = _official_dinov2(seed=1)
    sd["pos_embed"] = torch.randn(1, 1 + 16 * 16, 384)  # a 224 px checkpoint
    path = tmp_path / "vits14_224.pth"
    torch.save(sd, path)
    model = _model("dpt-dinov2-s", seed=0)
    load_encoder_weights(model, path, Family.vit)
    pos = model.encoder.model.pos_embed
    assert pos.shape == (1, 1 + 37 * 37, 384)
    assert torch.equal(pos[:, 0], sd["pos_embed"][:, 0])  # class token's embedding kept


def test_dinov2_base_file_into_small_model_is_an_error(tmp_path):
    with torch.device("meta"):  # ViT-B/14 shapes without building its weights
        shapes = timm.create_model("vit_base_patch14_dinov2").state_dict()
    sd = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()}
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({**sd, "mask_token": torch.zeros(1, 768)}, path)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(_model("dpt-dinov2-s"), path, Family.vit)
    msg = str(err.value)
    assert str(path) in msg and "(1, 1, 768) in the file but (1, 1, 384)" in msg
    assert "ViT-B/14 checkpoint, but model.name=dpt-dinov2-s has a ViT-S/14 encoder" in msg


# ------------------------------------------------------------------------- files and configs
def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_state_dict(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="cannot read .*notes.pth: it is not a PyTorch"):
        read_state_dict(text)
    pickled = tmp_path / "train_state.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(CheckpointError, match="Python objects besides tensors"):
        read_state_dict(pickled)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(empty)


def test_describe():
    assert describe(torchvision.models.resnet50(weights=None).state_dict()) == "ResNet-50"
    assert describe({"foo.weight": torch.zeros(1)}) is None


def test_pretrained_config_reaches_student_and_both_teachers(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    cfg = load_config(
        "demo", ["model.name=unet-r18", f"model.pretrained={path}", "data.batch_size=2"]
    )

    def make_model():
        return build_model(cfg.model, 5)

    method = build_method(cfg, make_model(), make_model)
    for model in (method.student, *method.teachers):
        _assert_loaded(model.encoder, sd)
    # Decoders keep their own random init (official: teachers are not copies of the student).
    s_dec, t_dec = method.student.net.decoder, method.teachers[0].net.decoder
    assert not torch.equal(next(s_dec.parameters()), next(t_dec.parameters()))


def test_bundled_lite0_weights_are_renamed_correctly_and_recognise_a_cat():
    """The bundled EfficientNet-Lite0 file (lukemelas layout) loads into timm's network under
    our key renaming and, with its own ImageNet classifier, still calls skimage's cat a cat: a
    wrong stage/block mapping would load (shapes repeat within a stage) but classify garbage."""
    from skimage import data as skdata

    from dualteacher.models.weights import _efficientnet_to_timm, bundled_weights, read_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    sd = _efficientnet_to_timm(read_state_dict(bundled_weights("unet-effl0")), net)
    sd = {k.replace("_fc.", "classifier."): v for k, v in sd.items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    img = torch.from_numpy(skdata.chelsea()[:, 50:350]).permute(2, 0, 1).float() / 255
    x = F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top1 = int(net((x - 0.5) / 0.5).argmax())
    assert 281 <= top1 <= 285  # ImageNet's domestic cat classes (tabby ... Egyptian cat)
