"""Dual Teacher pinned mode by mode (docs/methods.md table "Dual Teacher: faithful and clean").

Every behaviour of that table has a test here that fails when it changes; the mutations tried
are listed in ``docs/notes/issue13_dual_teacher_tests.md``. The step tests run
``training_step`` of tiny stub models on hand-made batches, record every forward of the student
and the teachers and every random draw of the mixing, and recompute what the step must return
with ``reference_step``: the step of ``docs/method.md`` ("The training step", steps 3-7)
written out again, its quirks switched by the flags the test expects of each mode
(``EXPECTED_FLAGS``). For each quirk the tests also check that the data make it visible: the
reference with that one flag flipped gives another answer.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, fields, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2

import dualteacher.methods.dual_teacher as dt_module
from dualteacher.config import load_config
from dualteacher.data.loaders import build_train_loaders
from dualteacher.data.transforms import denormalize
from dualteacher.engine.run import build_training
from dualteacher.engine.trainer import build_run
from dualteacher.errors import ConfigError
from dualteacher.methods import StepInfo
from dualteacher.methods.dual_teacher import (
    DualTeacher,
    DualTeacherFlags,
    active_teacher,
    ema_index,
    reco_augment,
    resolve_flags,
)
from dualteacher.methods.mixing import mix
from dualteacher.models.segmodel import SegModel

from .conftest import TINY

MODES = ("faithful", "clean")
K, H, W, B = 3, 16, 16, 2  # classes, crop, unlabelled (= labelled) batch of the stub steps
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TEACHER_NAMES = ("teacher_a", "teacher_b")  # eval_models() names, as checkpoints and logs use
BRANCHES = ("cutmix", "classmix")  # teacher A's and B's mixing: loss_cutmix / loss_classmix

# What each mode must do; True = the official code's behaviour (see DualTeacherFlags).
EXPECTED_FLAGS = {
    "faithful": DualTeacherFlags(
        ema_restart=True,
        ic_mask_from_labeled=True,
        batch_jitter_strong_view=True,
        teachers_train_mode=True,
        ema_params_only=True,
        cutmix_unmixed_conf=True,
        pil_8bit=True,
        ic_second_teacher_forward=True,
        padding_in_unsup=True,
        official_pad=True,
    ),
    "clean": DualTeacherFlags(
        ema_restart=True,
        ic_mask_from_labeled=False,
        batch_jitter_strong_view=False,
        teachers_train_mode=False,
        ema_params_only=False,
        cutmix_unmixed_conf=False,
        pil_8bit=False,
        ic_second_teacher_forward=False,
        padding_in_unsup=False,
        official_pad=False,
    ),
}


# ------------------------------------------------------------------------- switching rule
# (epoch, switch_every) -> teacher on duty: A (0) on even shifts with CutMix, B (1) on odd.
SWITCH_TABLE = [
    (0, 1, 0),
    (1, 1, 1),
    (2, 1, 0),
    (3, 1, 1),
    (10, 1, 0),
    (0, 2, 0),
    (1, 2, 0),
    (2, 2, 1),
    (3, 2, 1),
    (4, 2, 0),
]


@pytest.mark.parametrize(("epoch", "every", "teacher"), SWITCH_TABLE)
def test_switching_table(epoch, every, teacher):
    assert active_teacher(epoch, every) == teacher


# (step, epoch_steps, switch_every, restart) -> EMA index i
EMA_INDEX_TABLE = [
    (0, 5, 1, True, 0),
    (4, 5, 1, True, 4),
    (5, 5, 1, True, 0),  # a new shift starts: i restarts, momentum 0, hard copy
    (7, 5, 1, True, 2),
    (7, 5, 2, True, 7),
    (10, 5, 2, True, 0),
    (7, 5, 1, False, 7),  # global index: no restart
    (10, 5, 2, False, 10),
]


@pytest.mark.parametrize(("step", "epoch_steps", "every", "restart", "i"), EMA_INDEX_TABLE)
def test_ema_index_table(step, epoch_steps, every, restart, i):
    assert ema_index(step, epoch_steps, every, restart) == i


# --------------------------------------------------------------------------- modes, defaults
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_resolves_to_its_flags(mode):
    dt = load_config(None, [f"method.dual_teacher.mode={mode}"]).method.dual_teacher
    assert resolve_flags(dt) == EXPECTED_FLAGS[mode]
    global_ema = ["method.dual_teacher.ema_restart=false"]
    dt = load_config(None, [f"method.dual_teacher.mode={mode}", *global_ema]).method.dual_teacher
    assert resolve_flags(dt) == replace(EXPECTED_FLAGS[mode], ema_restart=False)


def test_official_hyper_parameters_are_the_defaults():
    cfg = load_config(None)
    assert cfg.method.name == "dual_teacher" and cfg.method.dual_teacher.mode == "faithful"
    assert cfg.method.conf_thresh == 0.95  # all three unlabelled terms
    assert cfg.method.ema_momentum == 0.99  # EMA cap
    dt = cfg.method.dual_teacher
    assert (dt.ic_weight, dt.cutmix_beta, dt.switch_every, dt.ema_restart) == (0.2, 4.0, 1, True)


@pytest.mark.parametrize("mode", MODES)
def test_mode_sets_what_the_data_pipeline_makes(mode):
    method = make_method(mode)
    f = EXPECTED_FLAGS[mode]
    assert method.needs_strong_view == (not f.batch_jitter_strong_view)
    assert method.official_pad == f.official_pad


def test_faithful_requires_equal_batches():
    cfg = load_config("demo", [*TINY, "data.batch_size_u=4"])
    with pytest.raises(ConfigError, match="batch_size_u"):
        build_run(cfg)


# ------------------------------------------------------------------------ stub models, data
class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        return [x, self.conv(x)]  # smp layout: the input image is level 0


class _Decoder(nn.Module):
    def __init__(self, bn: bool):
        super().__init__()
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()

    def forward(self, features):
        return self.bn(features[-1])


class _Net(nn.Module):
    def __init__(self, bn: bool, dropout: float):
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder(bn)
        drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.segmentation_head = nn.Sequential(drop, nn.Conv2d(6, K, 1))


def make_method(mode: str, *overrides: str, bn=True, dropout=0.5) -> DualTeacher:
    """Dual Teacher around 1x1-conv stub models: BatchNorm and Dropout2d make train and eval
    mode differ. Teacher logits are scaled so that some pixels pass 0.95 and some do not."""
    cfg = load_config(None, [f"method.dual_teacher.mode={mode}", *overrides])
    torch.manual_seed(0)

    def make():
        return SegModel(_Net(bn, dropout), 1, "stub", K)

    method = DualTeacher(make(), cfg, make)
    with torch.no_grad():
        for t in method.teachers:
            t.net.segmentation_head[-1].weight.mul_(6)
    return method.train()


def make_batches(b: int = B, seed: int = 1):
    """Labelled images whose top rows are ignore, unlabelled ones whose right columns are
    padding (another region, so the two IC masks differ), and a strong view for clean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, H, W, generator=g)
    y = torch.randint(0, K, (b, H, W), generator=g)
    y[:, :5] = 255
    ignore = torch.zeros(b, H, W, dtype=torch.bool)
    ignore[:, :, -5:] = True
    x_u = (1.5 * torch.randn(b, 3, H, W, generator=g)).masked_fill(ignore[:, None], 0.0)
    x_s = 1.5 * torch.randn(b, 3, H, W, generator=g)
    return {"image": x, "mask": y}, {"image": x_u, "image_s": x_s, "ignore": ignore}


@dataclass
class Call:
    input: torch.Tensor
    output: torch.Tensor
    training: bool


def record_forwards(method: DualTeacher) -> dict[str, list[Call]]:
    """Every forward of the student and of each teacher, by name, in order."""
    calls: dict[str, list[Call]] = {}
    for name, model in method.eval_models().items():
        calls[name] = []

        def hook(module, inputs, output, log=calls[name]):
            log.append(Call(inputs[0].detach().clone(), output.detach().clone(), module.training))

        model.register_forward_hook(hook)
    return calls


class Draws:
    """Records every call of the mixing's random draws (the real functions run); ``force``
    replaces one by a fixed answer."""

    NAMES = (
        "cutmix_box_mask",
        "shuffled_partners",
        "reco_augment",
        "classmix_mask",
        "classmix_partners",
    )

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.log: dict[str, list] = defaultdict(list)
        for name in self.NAMES:
            self._spy(name, getattr(dt_module, name))

    def _spy(self, name, fn):
        def spy(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.log[name].append((args, kwargs, out))
            return out

        self.monkeypatch.setattr(dt_module, name, spy)

    def force(self, name, fn):
        self._spy(name, fn)

    def one(self, name):
        """``(args, kwargs, result)`` of the one call of ``name``."""
        assert len(self.log[name]) == 1, f"{name} called {len(self.log[name])} times"
        return self.log[name][0]

    def out(self, name):
        return self.one(name)[2]


@pytest.fixture
def draws(monkeypatch):
    return Draws(monkeypatch)


def _pseudo(call: Call, valid: torch.Tensor):
    conf, pl = call.output.softmax(1).max(1)
    return conf, pl.masked_fill(~valid, 255)


def reference_step(f: DualTeacherFlags, k: int, calls, bx, bu, draws, thresh=0.95) -> dict:
    """What the step must return (and feed its mixing with), from ``docs/method.md`` (steps
    3-7), given the recorded forwards and draws. Official normalisers count every pixel;
    ``clean``'s count the valid ones (no padding), the same thing when ``padding_in_unsup``."""
    x, y, x_u = bx["image"], bx["mask"], bu["image"]
    b = len(x)
    valid_u = torch.ones_like(bu["ignore"]) if f.padding_in_unsup else ~bu["ignore"]
    (pair,) = [c for c in calls["student"] if len(c.input) == 2 * b]  # [labelled, mixed]
    (single,) = [c for c in calls["student"] if len(c.input) == b]  # the IC forward
    teacher = calls[TEACHER_NAMES[k]]
    conf, pl = _pseudo(teacher[0], valid_u)
    x_s, logits_u = single.input, pair.output[b:]
    exp = {"loss_x": F.cross_entropy(pair.output[:b], y, ignore_index=255), "pl": pl}
    if k == 0:  # step 4: CutMix of weak views, per-image weights, mean over pixels with CE > 0
        box, perm = draws.out("cutmix_box_mask"), draws.out("shuffled_partners")
        conf_in = conf if f.cutmix_unmixed_conf else mix(box, conf[perm], conf)
        exp["reco_in"] = (mix(box, x_u[perm], x_u), mix(box, pl[perm], pl), conf_in)
        x_m, pl_m, conf_m = draws.out("reco_augment")
        exp["mixed"] = x_m
        valid = pl_m != 255
        confident = (conf_m >= thresh) & valid
        weight = confident.sum((1, 2)) / valid.sum((1, 2))  # (B,)
        ce = F.cross_entropy(logits_u, pl_m, reduction="none", ignore_index=255)
        exp["loss_cutmix"] = (weight.view(-1, 1, 1) * ce)[ce > 0].mean()
        exp["mask_ratio"] = confident.sum() / valid.sum()
    else:  # step 5: ClassMix of strong views, one weight for the batch, mean over pixels
        keep, perm = draws.out("classmix_mask"), draws.out("classmix_partners")
        exp["mixed"] = mix(keep, x_s, x_s[perm])
        conf_cm, pl_cm = mix(keep, conf, conf[perm]), mix(keep, pl, pl[perm])
        valid = pl_cm != 255
        weight = ((conf_cm >= thresh) & valid).sum() / valid.sum()
        ce = F.cross_entropy(logits_u, pl_cm, reduction="none", ignore_index=255)
        exp["loss_classmix"] = (weight * ce).sum() / valid.sum()
        exp["mask_ratio"] = weight
    # step 6: IC, the student on the strong view against the teacher's confident pseudo-labels
    conf2, pl2 = _pseudo(teacher[-1] if f.ic_second_teacher_forward else teacher[0], valid_u)
    valid_ic = y != 255 if f.ic_mask_from_labeled else valid_u
    ce_s = F.cross_entropy(single.output, pl2, reduction="none", ignore_index=255)
    exp["loss_ic"] = (ce_s * ((conf2 >= thresh) & valid_ic)).sum() / valid_ic.sum()
    exp["loss"] = exp["loss_x"] + exp[f"loss_{BRANCHES[k]}"] + 0.2 * exp["loss_ic"]
    return exp


def _close(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_close(u, v) for u, v in zip(a, b))
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5)


def _run_step(mode: str, k: int, draws: Draws, **model):
    method = make_method(mode, **model)
    # a partner that is never the image itself, so CutMix's mixed and un-mixed differ
    draws.force("shuffled_partners", lambda b, device="cpu": torch.arange(b).roll(1))
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    return method, out, calls, bx, bu


# Flags whose two values reference_step tells apart, per teacher on duty (A: 0, B: 1).
VISIBLE = {
    0: ("padding_in_unsup", "ic_mask_from_labeled", "cutmix_unmixed_conf"),
    1: ("padding_in_unsup", "ic_mask_from_labeled"),
}


@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_step_is_the_official_algorithm_with_the_modes_quirks(mode, k, draws):
    f = EXPECTED_FLAGS[mode]
    _, out, calls, bx, bu = _run_step(mode, k, draws)
    exp = reference_step(f, k, calls, bx, bu, draws)

    # Teacher A on even epochs, B on odd ones; the other one idle. F7: train or eval mode.
    # F12: faithful labels the IC term with a second forward.
    teacher, idle = calls[TEACHER_NAMES[k]], calls[TEACHER_NAMES[1 - k]]
    assert idle == [] and len(teacher) == (2 if f.ic_second_teacher_forward else 1)
    assert all(c.training == f.teachers_train_mode for c in teacher)
    assert all(torch.equal(c.input, bu["image"]) for c in teacher)  # on the weak view

    # F4: faithful's strong view is one jitter of the normalised batch (clamped to [0, 1]);
    # clean's comes from the data pipeline. Either way it is not the weak view.
    (single,) = [c for c in calls["student"] if len(c.input) == B]
    x_s = single.input
    assert not torch.equal(x_s, bu["image"])
    if f.batch_jitter_strong_view:
        assert x_s.min() >= 0 and x_s.max() <= 1 and bu["image"].min() < 0
    else:
        assert torch.equal(x_s, bu["image_s"])

    # Teacher A pairs with CutMix of weak views, B with ClassMix of strong views.
    (pair,) = [c for c in calls["student"] if len(c.input) == 2 * B]
    assert torch.equal(pair.input[:B], bx["image"])
    assert torch.allclose(pair.input[B:], exp["mixed"])
    assert out["active_teacher"] == k
    assert set(out) == {"loss", "loss_x", f"loss_{BRANCHES[k]}", "loss_ic", "mask_ratio"} | {
        "active_teacher"
    }
    assert len(draws.log["cutmix_box_mask"]) == (k == 0) == len(draws.log["reco_augment"])
    assert len(draws.log["classmix_mask"]) == (k == 1)
    if k == 0:
        args, _, _ = draws.one("cutmix_box_mask")
        assert args[:3] == (B, H, W) and args[3] == 4.0  # Beta(4, 4)
        # F8: what goes into the ReCo augmentation: mixed image and pseudo-label, and the
        # confidence un-mixed (faithful) or mixed (clean).
        reco_args, _, (x_m, _, conf_m) = draws.one("reco_augment")
        assert _close(tuple(reco_args[:3]), exp["reco_in"])
        # F8: faithful's PIL round trip: confidence in 1/255 steps, image 8-bit.
        on_grid = torch.allclose(conf_m * 255, (conf_m * 255).round(), atol=1e-3)
        pixels = denormalize(x_m, MEAN, STD) * 255
        assert on_grid == f.pil_8bit
        assert torch.allclose(pixels, pixels.round(), atol=2e-3) == f.pil_8bit
    else:  # ClassMix picks classes of the weak view's pseudo-labels
        assert torch.equal(draws.one("classmix_mask")[0][0], exp["pl"])

    # The losses, the weights behind them and the IC weight 0.2.
    for key in ("loss", "loss_x", f"loss_{BRANCHES[k]}", "loss_ic", "mask_ratio"):
        torch.testing.assert_close(out[key], exp[key], msg=key)
    assert 0 < exp["mask_ratio"] < 1 and exp["loss_ic"] > 0  # both terms are non-trivial

    # These batches tell every quirk's two choices apart.
    for name in VISIBLE[k]:
        other = reference_step(replace(f, **{name: not getattr(f, name)}), k, calls, bx, bu, draws)
        assert not all(_close(other[key], exp[key]) for key in exp), name
    if f.ic_second_teacher_forward:  # dropout: the two teacher forwards differ
        other = reference_step(replace(f, ic_second_teacher_forward=False), k, calls, bx, bu, draws)
        assert not torch.allclose(other["loss_ic"], exp["loss_ic"])


@pytest.mark.parametrize("k", [0, 1])
def test_masked_mix_loss_trains_only_the_confident_pixels(k, draws):
    """method.dual_teacher.mix_loss=masked: the CutMix / ClassMix term is the CE of the
    confident pixels over all valid ones (the IC term's loss), not the official weighting of
    every pixel by its image's (CutMix) or batch's (ClassMix) share of confident pixels."""
    method = make_method("clean", "method.dual_teacher.mix_loss=masked")
    draws.force("shuffled_partners", lambda b, device="cpu": torch.arange(b).roll(1))
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    weighted = reference_step(EXPECTED_FLAGS["clean"], k, calls, bx, bu, draws)
    (pair,) = [c for c in calls["student"] if len(c.input) == 2 * B]
    logits_u = pair.output[B:]
    if k == 0:
        _, pl_m, conf_m = draws.out("reco_augment")
    else:
        keep, perm = draws.out("classmix_mask"), draws.out("classmix_partners")
        conf, pl = _pseudo(calls["teacher_b"][0], ~bu["ignore"])
        conf_m, pl_m = mix(keep, conf, conf[perm]), mix(keep, pl, pl[perm])
    valid = pl_m != 255
    ce = F.cross_entropy(logits_u, pl_m, reduction="none", ignore_index=255)
    expected = (ce * ((conf_m >= 0.95) & valid)).sum() / valid.sum()
    key = f"loss_{BRANCHES[k]}"
    torch.testing.assert_close(out[key], expected)
    assert not torch.allclose(out[key], weighted[key])  # the two choices differ here
    # the rest of the step is the clean step's
    for other in ("loss_x", "loss_ic", "mask_ratio"):
        torch.testing.assert_close(out[other], weighted[other], msg=other)


@pytest.mark.parametrize("mode", MODES)
def test_the_loss_is_summed_in_the_official_order_bit_for_bit(mode, draws):
    """loss = (loss_x + loss_mix) + 0.2 loss_ic exactly: float sums depend on their order, and
    another order changes the last bit, then every later step (the README numbers with it)."""
    method = make_method(mode)
    for step in (1, 5):  # teacher A's CutMix shift, then teacher B's ClassMix shift
        out = method.training_step(*make_batches(), StepInfo(step=step, epoch_steps=4))
        k = out["active_teacher"]
        official = out["loss_x"] + out[f"loss_{BRANCHES[k]}"] + 0.2 * out["loss_ic"]
        assert torch.equal(out["loss"], official)


@pytest.mark.parametrize(("step", "weight"), [(0, math.exp(-5)), (5, math.exp(-1.25)), (12, 1.0)])
def test_rampup_scales_the_unsupervised_terms(step, weight, draws):
    """method.dual_teacher.rampup_steps=10: loss = loss_x + w(step) (mix + 0.2 ic), with the
    sigmoid ramp w = exp(-5 (1 - step/10)^2), 1 from step 10 on."""
    method = make_method("clean", "method.dual_teacher.rampup_steps=10")
    out = method.training_step(*make_batches(), StepInfo(step=step, epoch_steps=4))
    k = out["active_teacher"]
    unsup = out[f"loss_{BRANCHES[k]}"] + 0.2 * out["loss_ic"]
    torch.testing.assert_close(out["loss"], out["loss_x"] + weight * unsup)
    assert out[f"loss_{BRANCHES[k]}"] > 0 and out["loss_ic"] > 0


@pytest.mark.parametrize(("mode", "k"), [(m, k) for m in MODES for k in (0, 1)])
def test_confident_means_at_least_the_threshold(mode, k, draws):
    """conf >= conf_thresh (official), in every term: a pixel exactly at it counts."""
    method = make_method(mode, bn=False, dropout=0.0)  # same teacher output in either mode
    bx, bu = make_batches()
    conf = method.teachers[k](bu["image"]).softmax(1).max(1).values.detach()
    level = conf.flatten().median()
    if mode == "faithful" and k == 0:  # the CutMix weight sees 8-bit confidence (F8)
        level = torch.floor(level * 255) / 255
    method.conf_thresh = float(level)  # exactly a float32 value some pixels have
    draws.force("shuffled_partners", lambda b, device="cpu": torch.arange(b).roll(1))
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    f = EXPECTED_FLAGS[mode]
    at = reference_step(f, k, calls, bx, bu, draws, thresh=float(level))
    above = torch.nextafter(level, torch.tensor(2.0))  # ">" is ">=" the next float up
    strict = reference_step(f, k, calls, bx, bu, draws, thresh=float(above))
    keys = (f"loss_{BRANCHES[k]}", "loss_ic", "mask_ratio")
    assert not all(_close(at[key], strict[key]) for key in keys)
    for key in keys:
        torch.testing.assert_close(out[key], at[key], msg=key)


def test_faithful_strong_view_is_the_official_batch_jitter():
    """7.4: faithful's strong view (the student's IC input, (B, 3, H, W)) is the official
    ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` then ``RandomGrayscale(p=0.2)`` of the whole weak batch
    as it is (normalised; the jitter clamps it to [0, 1]), drawn first in the step. The
    reference is rebuilt here from the spec's numbers and replayed from the same seed, so the
    weak view (clamped or not), a jitter per image or other parameters all give another input.
    """
    spec_view = v2.Compose([v2.ColorJitter(0.5, 0.5, 0.5, 0.25), v2.RandomGrayscale(p=0.2)])
    bx, bu = make_batches()
    x_u = bu["image"]
    grey = []
    for seed in range(16):  # seed 12 greys at p = 0.5 but not at 0.2
        method = make_method("faithful")
        calls = record_forwards(method)
        torch.manual_seed(seed)
        method.training_step(bx, bu, StepInfo(step=1, epoch_steps=4))  # teacher A's shift
        (single,) = [c for c in calls["student"] if len(c.input) == B]
        torch.manual_seed(seed)
        expected = spec_view(x_u.clone())
        torch.testing.assert_close(single.input, expected, msg=f"seed {seed}")
        # what the reference is: not the clamped weak view, in [0, 1]; grey images have equal
        # channels (the whole batch at once, with p = 0.2)
        assert not torch.allclose(expected, x_u.clamp(0, 1), atol=1e-3), seed
        assert expected.min() >= 0 and expected.max() <= 1
        is_grey = [bool((v[0] == v[1]).all() and (v[1] == v[2]).all()) for v in expected]
        assert len(set(is_grey)) == 1, seed  # one greyscale draw for the batch
        grey.append(is_grey[0])
    assert any(grey) and not all(grey)  # both outcomes of RandomGrayscale were replayed


def test_faithful_strong_view_shares_one_jitter_across_the_batch():
    """F4: one ColorJitter + RandomGrayscale draw for the whole normalised batch."""
    method = make_method("faithful")
    bx, bu = make_batches()
    bu["image"] = bu["image"][:1].expand(B, -1, -1, -1).contiguous()  # two identical images
    bu["ignore"] = bu["ignore"][:1].expand(B, -1, -1).contiguous()
    calls = record_forwards(method)
    method.training_step(bx, bu, StepInfo(step=5, epoch_steps=4))
    (single,) = [c for c in calls["student"] if len(c.input) == B]
    assert torch.equal(single.input[0], single.input[1])


@pytest.mark.parametrize("mode", MODES)
def test_padding_stays_out_of_the_unsupervised_terms_in_clean(mode):
    """clean: a teacher confident only on padding gives no unsupervised signal; faithful
    (official) counts the padding as image."""
    method = make_method(mode, bn=False, dropout=0.0)
    bx, bu = make_batches()
    with torch.no_grad():  # teacher A: confident exactly where channel 0 is large
        head = method.teachers[0].net.segmentation_head[-1]
        enc = method.teachers[0].net.encoder.conv
        enc.weight.zero_(), enc.bias.zero_(), head.weight.zero_(), head.bias.zero_()
        enc.weight[0, 0] = 1.0
        head.weight[0, 0] = 20.0
    x_u = torch.zeros_like(bu["image"])
    x_u[:, 0] = bu["ignore"].float()  # high on the padding only
    bu["image"] = x_u
    bx["mask"].fill_(0)  # no labelled ignore: faithful's IC mask counts every pixel
    out = method.training_step(bx, bu, StepInfo(step=1, epoch_steps=4))
    if mode == "clean":
        assert out["mask_ratio"] == 0 and out["loss_ic"] == 0 and out["loss_cutmix"] == 0
    else:
        assert out["mask_ratio"] > 0 and out["loss_ic"] > 0 and out["loss_cutmix"] > 0


# ----------------------------------------------------------------------- teachers and EMA
# (step, epoch_steps, switch_every, ema_restart, cap) -> (teacher that moves, momentum)
AFTER_STEP_TABLE = [
    (0, 4, 1, True, 0.99, 0, 0.0),  # first step of A's shift: hard copy of the student
    (1, 4, 1, True, 0.99, 0, 0.5),
    (3, 4, 1, True, 0.99, 0, 0.75),
    (4, 4, 1, True, 0.99, 1, 0.0),  # B's shift begins: i restarts
    (6, 4, 1, True, 0.99, 1, 2 / 3),
    (8, 4, 1, True, 0.99, 0, 0.0),
    (98, 200, 1, True, 0.99, 0, 1 - 1 / 99),
    (99, 200, 1, True, 0.99, 0, 0.99),  # capped from i = 99 on
    (150, 200, 1, True, 0.99, 0, 0.99),
    (6, 4, 2, True, 0.99, 0, 6 / 7),  # shifts of two epochs: still A, i = 6
    (8, 4, 2, True, 0.99, 1, 0.0),
    (4, 4, 1, False, 0.99, 1, 0.8),  # global index: B's first step averages, no copy
    (50, 200, 1, True, 0.9, 0, 0.9),  # method.ema_momentum is the cap
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("step", "epoch_steps", "every", "restart", "cap", "k", "momentum"), AFTER_STEP_TABLE
)
def test_after_step_moves_the_teacher_on_duty(
    mode, step, epoch_steps, every, restart, cap, k, momentum
):
    method = make_method(
        mode,
        f"method.dual_teacher.switch_every={every}",
        f"method.dual_teacher.ema_restart={restart}",
        f"method.ema_momentum={cap}",
        bn=False,
        dropout=0.0,
    )
    with torch.no_grad():
        for t in method.teachers:
            for p in t.parameters():
                p.zero_()
        for p in method.student.parameters():
            p.fill_(1.0)
    method.after_step(StepInfo(step, epoch_steps))
    moved = torch.cat([p.flatten() for p in method.teachers[k].parameters()])
    idle = torch.cat([p.flatten() for p in method.teachers[1 - k].parameters()])
    torch.testing.assert_close(moved, torch.full_like(moved, 1 - momentum))
    assert torch.equal(idle, torch.zeros_like(idle))


@pytest.mark.parametrize("mode", MODES)
def test_ema_of_batchnorm_buffers_per_mode(mode):
    """faithful (official update_ema): parameters only; clean: BN statistics averaged too."""
    method = make_method(mode)
    student_bn, teacher_bn = method.student.net.decoder.bn, method.teachers[0].net.decoder.bn
    student_bn.running_mean.fill_(4.0)
    teacher_bn.running_mean.zero_()
    method.after_step(StepInfo(step=1, epoch_steps=4))  # momentum 0.5
    expected = 0.0 if EXPECTED_FLAGS[mode].ema_params_only else 2.0
    assert torch.allclose(teacher_bn.running_mean, torch.full((6,), expected))


@pytest.mark.parametrize("mode", MODES)
def test_teachers_start_from_the_pretrained_encoder_with_their_own_decoder(mode, tmp_path):
    """Both modes (docs/method.md F10): a teacher is a model of its own, built like the
    student - the pretrained encoder, its own random decoder - not a copy of the student."""
    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    cfg = load_config(
        "demo",
        [*TINY, f"model.pretrained={tmp_path / 'r18.pth'}", f"method.dual_teacher.mode={mode}"],
    )
    method = build_run(cfg).method

    def flat(module):
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    student, (a, b) = method.student, method.teachers
    for model in (student, a, b):
        assert torch.equal(model.encoder.conv1.weight, sd["conv1.weight"])
        assert torch.equal(model.encoder.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    decoders = [flat(m.net.decoder) for m in (student, a, b)]
    assert not torch.equal(decoders[0], decoders[1]) and not torch.equal(decoders[0], decoders[2])
    assert not torch.equal(decoders[1], decoders[2])
    assert not any(p.requires_grad for t in (a, b) for p in t.parameters())


def _flat(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("mode", MODES)
def test_only_the_active_teacher_changes(mode):
    """End to end on the demo data: real loaders, optimizer, after_step."""
    cfg = load_config("demo", [*TINY, f"method.dual_teacher.mode={mode}"])
    run = build_run(cfg)
    method = run.method
    lx, lu = build_train_loaders(
        run.bundle,
        cfg.data,
        seed=0,
        start_step=0,
        need_unlabeled=True,
        need_strong=method.needs_strong_view,
        official_pad=method.official_pad,
    )
    it_x, it_u = iter(lx), iter(lu)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.1)
    epoch_steps = 2
    for step in range(5):
        info = StepInfo(step, epoch_steps)
        k = active_teacher(info.epoch)
        before = [_flat(t) for t in method.teachers]
        out = method.training_step(next(it_x), next(it_u), info)
        assert out["active_teacher"] == k
        assert torch.isfinite(out["loss"]) and out["loss"] > 0
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for t in method.teachers for p in t.parameters())
        opt.step()
        method.after_step(info)
        after = [_flat(t) for t in method.teachers]
        assert not torch.equal(before[k], after[k])
        assert torch.equal(before[1 - k], after[1 - k])  # the off-duty teacher: bit-identical
        if info.iter_in_epoch == 0:  # shift start, official restart: hard copy of the student
            assert torch.equal(after[k], _flat(method.student))
        else:
            assert not torch.equal(after[k], _flat(method.student))


# -------------------------------------------------------------- ReCo augmentation (CutMix)
def _ramp_batch(b: int):
    """Grey images dark on the left, bright on the right; pseudo-label = column index;
    confidence = column / W, so a flip of any of the three shows."""
    ramp = torch.linspace(0.1, 0.9, W).view(1, 1, 1, W).expand(b, 3, H, W)
    x = (ramp - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    pl = torch.arange(W).view(1, 1, W).expand(b, H, W)
    conf = pl.float() / W + 0.001
    return x, pl, conf


@pytest.mark.parametrize("pil_8bit", [True, False])
def test_reco_augment_flips_image_label_and_confidence_together(pil_8bit):
    torch.manual_seed(0)
    x, pl, conf = _ramp_batch(64)
    x_o, pl_o, conf_o = reco_augment(x, pl, conf, MEAN, STD, pil_8bit)
    flipped = pl_o[:, 0, 0] == W - 1
    assert 0.3 < flipped.float().mean() < 0.7  # p = 0.5 per image
    assert torch.equal(pl_o, torch.where(flipped.view(-1, 1, 1), pl.flip(-1), pl))
    expected = torch.floor(conf * 255) / 255 if pil_8bit else conf
    assert torch.equal(conf_o, torch.where(flipped.view(-1, 1, 1), expected.flip(-1), expected))
    grey = denormalize(x_o, MEAN, STD).mean(1)  # (B, H, W)
    bright_right = grey[..., W // 2 :].mean((1, 2)) > grey[..., : W // 2].mean((1, 2))
    assert torch.equal(bright_right, ~flipped)


def test_reco_augment_jitters_and_blurs_each_image_at_the_official_rates():
    """Jitter p = 0.8, blur p = 0.5, drawn per image: ~10 % come out unchanged (up to the
    flip), and identical inputs come out different."""
    torch.manual_seed(0)
    n = 400
    x = torch.randn(1, 3, H, W).expand(n, -1, -1, -1)
    pl, conf = torch.zeros(n, H, W, dtype=torch.long), torch.ones(n, H, W)
    x_o, _, _ = reco_augment(x, pl, conf, MEAN, STD, pil_8bit=False)
    ref = normalize_back(denormalize(x, MEAN, STD).clamp(0, 1))
    same = [
        torch.allclose(xo, xi, atol=1e-5) or torch.allclose(xo, xi.flip(-1), atol=1e-5)
        for xo, xi in zip(x_o, ref)
    ]
    assert 0.05 < sum(same) / n < 0.16
    assert len({tuple(xo.flatten()[:8].tolist()) for xo in x_o}) > n / 2


def normalize_back(img01):
    return (img01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_reco_augment_pil_round_trip_quantises_to_8_bits():
    torch.manual_seed(0)
    x, conf = torch.randn(8, 3, H, W), torch.rand(8, H, W)
    pl = torch.zeros(8, H, W, dtype=torch.long)
    for pil_8bit in (True, False):
        x_o, _, conf_o = reco_augment(x, pl, conf, MEAN, STD, pil_8bit)
        pixels = denormalize(x_o, MEAN, STD) * 255
        assert torch.allclose(pixels, pixels.round(), atol=2e-3) == pil_8bit
        assert torch.allclose(conf_o * 255, (conf_o * 255).round(), atol=1e-4) == pil_8bit


def test_reco_blur_sigma_is_uniform_from_0_15_to_1_15(monkeypatch):
    """Official ReCo transform: GaussianBlur with radius ~ U(0.15, 1.15), half of the images."""
    sigmas = []
    real = dt_module.TF.gaussian_blur

    def spy(img, kernel_size, sigma):
        sigmas.append(sigma)
        return real(img, kernel_size=kernel_size, sigma=sigma)

    monkeypatch.setattr(dt_module.TF, "gaussian_blur", spy)
    torch.manual_seed(0)
    x, pl, conf = _ramp_batch(200)
    reco_augment(x, pl, conf, MEAN, STD, pil_8bit=False)
    assert 70 < len(sigmas) < 130
    assert 0.15 <= min(sigmas) < 0.2 and 1.1 < max(sigmas) <= 1.15


def test_official_jitter_parameters():
    """ReCo's ColorJitter((0.75, 1.25) x 3, hue +-0.25) and the faithful strong view's
    ColorJitter(0.5, 0.5, 0.5, 0.25) + RandomGrayscale(0.2)."""
    reco = dt_module.RECO_JITTER
    assert (reco.brightness, reco.contrast, reco.saturation) == ((0.75, 1.25),) * 3
    assert reco.hue == (-0.25, 0.25)
    jitter, grey = dt_module.BATCH_JITTER.transforms
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.5, 1.5),) * 3
    assert jitter.hue == (-0.25, 0.25) and grey.p == 0.2


def test_every_flag_is_in_the_docs_table():
    """The table "Dual Teacher: faithful and clean" moved from the README to docs/methods.md."""
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    table = page.split("## Dual Teacher: faithful and clean", 1)[1]
    for field in fields(DualTeacherFlags):
        assert f"`{field.name}`" in table, field.name


def test_class_adaptive_thresholds_follow_the_teachers_confidence_per_class():
    """threshold=class_adaptive: class c's threshold is conf_thresh * m_c / max m over the
    classes seen, m_c the bias-corrected EMA of the teacher's mean confidence on pixels it
    labels c; a class never seen keeps conf_thresh; the ignore index is not a class."""
    method = make_method("clean", "method.dual_teacher.threshold=class_adaptive")
    torch.testing.assert_close(method.class_thresholds(), torch.full((K,), 0.95))
    # class 0: confidences 0.9 and 1.0 (mean 0.95); class 1: 0.5; 255: ignored; others unseen
    conf = torch.tensor([[[0.9, 1.0, 0.5, 0.3]]])
    pl = torch.tensor([[[0, 0, 1, 255]]])
    method._update_class_conf(conf, pl)
    expected = torch.full((K,), 0.95)
    expected[1] = 0.95 * 0.5 / 0.95  # one step: the bias-corrected mean is the batch's mean
    torch.testing.assert_close(method.class_thresholds(), expected)
    # a second step with class 1 only: class 0 keeps its mean, class 1 averages 0.5 and 0.7
    method._update_class_conf(torch.tensor([[[0.7]]]), torch.tensor([[[1]]]))
    m = method.dt.class_thresh_momentum
    m1 = (m * (1 - m) * 0.5 + (1 - m) * 0.7) / (1 - m**2)
    expected[1] = 0.95 * m1 / 0.95
    torch.testing.assert_close(method.class_thresholds(), expected)
    # in the state dict: a checkpoint carries it and resume continues it
    state = method.state_dict()
    assert state["class_seen"].tolist()[:2] == [1, 2]
    # the mask: a class-1 pixel at 0.62 passes (threshold ~0.60), a class-0 one at 0.9 does not
    keep = method._confident(torch.tensor([0.62, 0.9]), torch.tensor([1, 0]))
    assert keep.tolist() == [True, False]


@pytest.mark.parametrize("k", [0, 1])
def test_class_adaptive_thresholds_choose_the_trained_pixels(k, draws):
    """The IC and mixing terms use the per-class thresholds: with a teacher sure of class 0 and
    unsure of the rest, class_adaptive trains pixels that the fixed 0.95 leaves out."""
    method = make_method(
        "clean",
        "method.dual_teacher.threshold=class_adaptive",
        "method.dual_teacher.mix_loss=masked",
    )
    # Pretend the teacher was confident in class 0 (0.99) and unsure of every other (0.5).
    method.class_conf.copy_(torch.tensor([0.99] + [0.5] * (K - 1)))
    method.class_seen.fill_(10_000)  # bias correction ~1
    thresholds = method.class_thresholds()
    assert thresholds[0] == pytest.approx(0.95) and thresholds[1] == pytest.approx(
        0.95 * 0.5 / 0.99
    )
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    teacher_call = calls[TEACHER_NAMES[k]][0]
    conf, pl = _pseudo(teacher_call, ~bu["ignore"])
    valid = pl != 255
    # the step updated the statistics after labelling; the masks used the updated thresholds
    thr = method.class_thresholds()[pl.clamp(max=K - 1)]
    (strong,) = [c for c in calls["student"] if len(c.input) == B]
    ce = F.cross_entropy(strong.output, pl, reduction="none", ignore_index=255)
    expected_ic = (ce * ((conf >= thr) & valid)).sum() / valid.sum()
    fixed_ic = (ce * ((conf >= 0.95) & valid)).sum() / valid.sum()
    torch.testing.assert_close(out["loss_ic"], expected_ic)
    assert not torch.allclose(expected_ic, fixed_ic)  # the thresholds changed what is trained


@pytest.mark.parametrize("k", [0, 1])
def test_class_weights_weigh_the_labelled_term_only(k, draws):
    """method.class_weights: the labelled CE is the weighted mean sum(w_y CE) / sum(w_y); the
    pseudo-label terms (IC, masked mixing) stay unweighted (weighting them made Dual Teacher
    collapse on a rare class: docs/gain.md)."""
    method = make_method("clean", "method.dual_teacher.mix_loss=masked", "method.conf_thresh=0.5")
    w = torch.tensor([0.5, 4.0, 1.5])
    method.set_class_weights(w)
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    (pair,) = [c for c in calls["student"] if len(c.input) == 2 * B]
    (single,) = [c for c in calls["student"] if len(c.input) == B]
    y = bx["mask"]
    ce_x = F.cross_entropy(pair.output[:B], y, reduction="none", ignore_index=255)
    w_x = w[y.clamp(max=K - 1)] * (y != 255)
    torch.testing.assert_close(out["loss_x"], (w_x * ce_x).sum() / w_x.sum())
    assert not torch.allclose(out["loss_x"], ce_x[y != 255].mean())  # not a no-op here
    conf, pl = _pseudo(calls[TEACHER_NAMES[k]][0], ~bu["ignore"])
    valid = pl != 255
    ce_s = F.cross_entropy(single.output, pl, reduction="none", ignore_index=255)
    torch.testing.assert_close(out["loss_ic"], (ce_s * ((conf >= 0.5) & valid)).sum() / valid.sum())
    if k == 0:
        _, pl_m, conf_m = draws.out("reco_augment")
    else:
        keep, perm = draws.out("classmix_mask"), draws.out("classmix_partners")
        conf_m, pl_m = mix(keep, conf, conf[perm]), mix(keep, pl, pl[perm])
    valid_m = pl_m != 255
    ce_m = F.cross_entropy(pair.output[B:], pl_m, reduction="none", ignore_index=255)
    expected_mix = (ce_m * ((conf_m >= 0.5) & valid_m)).sum() / valid_m.sum()
    torch.testing.assert_close(out[f"loss_{BRANCHES[k]}"], expected_mix)


@pytest.mark.parametrize("k", [0, 1])
def test_fused_forward_is_one_student_pass_with_the_same_losses(k, draws):
    """method.dual_teacher.fused_forward=true: the IC strong view joins the labelled + mixed
    batch in one student forward (3 B images instead of 2 B, then B). With a per-image model
    (no BatchNorm, no dropout), the step's losses and gradients are the separate passes'; with
    BatchNorm they differ only through its batch statistics."""
    draws.force("shuffled_partners", lambda b, device="cpu": torch.arange(b).roll(1))
    steps = {}
    for fused in (False, True):
        flag = f"method.dual_teacher.fused_forward={fused}"
        method = make_method("clean", flag, bn=False, dropout=0.0)
        bx, bu = make_batches()
        calls = record_forwards(method)
        torch.manual_seed(3)
        out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
        out["loss"].backward()
        grads = [p.grad.clone() for p in method.student.parameters()]
        steps[fused] = out, grads, [len(c.input) for c in calls["student"]], bu
    assert steps[False][2] == [2 * B, B] and steps[True][2] == [3 * B]
    (fused_call,) = calls["student"]
    torch.testing.assert_close(fused_call.input[2 * B :], steps[True][3]["image_s"])
    for key in ("loss", "loss_x", f"loss_{BRANCHES[k]}", "loss_ic", "mask_ratio"):
        torch.testing.assert_close(steps[True][0][key], steps[False][0][key], msg=key)
    for g_fused, g_apart in zip(steps[True][1], steps[False][1]):
        torch.testing.assert_close(g_fused, g_apart)


def test_distribution_alignment_moves_pseudo_labels_towards_the_labelled_shares():
    """distribution_alignment: the teacher's softmax times class_prior / (bias-corrected EMA of
    its mean softmax over valid pixels), renormalised; ignore pixels do not enter the mean."""
    method = make_method("clean", "method.dual_teacher.distribution_alignment=true")
    assert method.needs_class_prior
    # a teacher that leans to class 0 everywhere (0.6 / 0.3 / 0.1) on data labelled 1/3 each
    prob = torch.tensor([0.6, 0.3, 0.1]).view(1, K, 1, 1).expand(2, K, 4, 4).clone()
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1] = False
    prob[1] = torch.tensor([0.0, 0.0, 1.0]).view(K, 1, 1)  # ignore pixels: must not count
    method.set_class_prior(torch.full((K,), 1 / 3))
    conf, pl = method._aligned(prob, valid, update=True)
    # one step: the mean is the valid pixels' softmax; aligned = 1/3 each, argmax the first
    torch.testing.assert_close(
        method.pred_mean / (1 - method.dt.class_thresh_momentum), prob[0, :, 0, 0]
    )
    torch.testing.assert_close(conf[0], torch.full((4, 4), 1 / 3))
    # labelled masks say class 1 is most common: the same teacher output now labels class 1
    method.set_class_prior(torch.tensor([0.2, 0.7, 0.1]))
    conf, pl = method._aligned(prob, valid, update=False)
    assert pl[0].eq(1).all() and int(method.pred_seen) == 1  # update=False kept the mean
    expected = torch.tensor([0.2, 0.7, 0.1])  # 0.6 * 0.2/0.6, 0.3 * 0.7/0.3, 0.1 * 0.1/0.1
    torch.testing.assert_close(conf[0], torch.full((4, 4), float(expected.max() / expected.sum())))
    # off (the default): the argmax of the softmax, class 0
    plain = make_method("clean")
    assert not plain.needs_class_prior and "pred_mean" not in plain.state_dict()
    assert "pred_mean" in method.state_dict()  # a checkpoint carries it: resume is exact


@pytest.mark.parametrize("k", [0, 1])
def test_distribution_alignment_labels_the_training_step(k, draws):
    """The step's pseudo-labels (IC term) are the aligned ones, and the step updates the mean
    once even where faithful's second teacher forward predicts again."""
    method = make_method(
        "clean", "method.dual_teacher.distribution_alignment=true", "method.conf_thresh=0.3"
    )
    method.set_class_prior(torch.tensor([0.1, 0.1, 0.8]))
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    assert int(method.pred_seen) == 1
    valid = ~bu["ignore"]
    prob = calls[TEACHER_NAMES[k]][0].output.softmax(1)
    mean = method.pred_mean / (1 - method.dt.class_thresh_momentum)
    aligned = prob * (method.class_prior / mean).view(1, K, 1, 1)
    conf, pl = (aligned / aligned.sum(1, keepdim=True)).max(1)
    pl = pl.masked_fill(~valid, 255)
    (strong,) = [c for c in calls["student"] if len(c.input) == B]
    ce = F.cross_entropy(strong.output, pl, reduction="none", ignore_index=255)
    torch.testing.assert_close(
        out["loss_ic"], (ce * ((conf >= 0.3) & (pl != 255))).sum() / valid.sum()
    )
    plain_pl = prob.argmax(1).masked_fill(~valid, 255)
    assert not torch.equal(pl, plain_pl)  # the prior changed what is taught


def test_distribution_alignment_counts_one_prediction_per_step():
    """faithful predicts twice per step (ic_second_teacher_forward): the mean moves once."""
    method = make_method("faithful", "method.dual_teacher.distribution_alignment=true")
    assert method.flags.ic_second_teacher_forward
    bx, bu = make_batches()
    method.training_step(bx, bu, StepInfo(step=1, epoch_steps=4))
    assert int(method.pred_seen) == 1


def test_balance_confident_weighs_down_only_the_classes_handed_out_too_often():
    """balance_confident: a confident pseudo-label of class c weighs min(1, p_c / q_c), q the
    bias-corrected running share of the confident, valid pseudo-labels; unsure and ignore
    pixels do not count in q, a class never handed out keeps 1, and no class weighs over 1."""
    method = make_method("clean", "method.dual_teacher.balance_confident=true")
    assert method.needs_class_prior and "conf_share" in method.state_dict()
    method.set_class_prior(torch.tensor([0.5, 0.3, 0.2]))
    torch.testing.assert_close(method.class_balance(), torch.ones(K))  # before any step
    # 12 confident pixels: 9 of class 0, 3 of class 1; 2 unsure of class 2; 2 ignore
    pl = torch.tensor([0] * 9 + [1] * 3 + [2] * 2 + [255] * 2).view(1, 4, 4)
    conf = torch.tensor([0.99] * 12 + [0.5] * 2 + [0.99] * 2).view(1, 4, 4)
    method._update_conf_share(conf, pl)
    assert int(method.conf_share_seen) == 1
    # q = (0.75, 0.25, 0): weights 0.5 / 0.75, min(1, 0.3 / 0.25), 1 (not handed out)
    torch.testing.assert_close(method.class_balance(), torch.tensor([2 / 3, 1.0, 1.0]))
    # a step without confident pixels leaves the running share as it was
    method._update_conf_share(torch.zeros(1, 4, 4), pl)
    assert int(method.conf_share_seen) == 1
    plain = make_method("clean")
    assert not plain.needs_class_prior and "conf_share" not in plain.state_dict()
    assert plain._weigh(pl) is None


@pytest.mark.parametrize("k", [0, 1])
def test_balance_confident_weighs_every_unsupervised_term(k):
    """The step's IC loss is the masked CE with each pixel weighed by its pseudo-label's
    class_balance (this step's counts included); and both mixing branches weigh too: with a
    labelled prior of zeros every confident label weighs 0, so the unsupervised losses vanish
    where off they do not."""
    method = make_method(
        "clean", "method.dual_teacher.balance_confident=true", "method.conf_thresh=0.3"
    )
    method.set_class_prior(torch.tensor([0.1, 0.1, 0.8]))
    bx, bu = make_batches()
    calls = record_forwards(method)
    out = method.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
    valid = ~bu["ignore"]
    conf, pl = _pseudo(calls[TEACHER_NAMES[k]][0], valid)
    keep = (conf >= 0.3) & valid
    shares = torch.bincount(pl[keep], minlength=K).float() / keep.sum()
    expected_w = torch.where(shares > 0, (torch.tensor([0.1, 0.1, 0.8]) / shares).clamp(max=1), 1)
    torch.testing.assert_close(method.class_balance(), expected_w)
    assert float(expected_w.min()) < 1  # the draw does weigh a class down
    (strong,) = [c for c in calls["student"] if len(c.input) == B]
    ce = F.cross_entropy(strong.output, pl, reduction="none", ignore_index=255)
    weighted = ce * expected_w[pl.clamp(max=K - 1)] * keep
    torch.testing.assert_close(out["loss_ic"], weighted.sum() / valid.sum())

    mix_key = f"loss_{BRANCHES[k]}"
    for balance, mix_loss in itertools.product((False, True), ("masked", "weighted")):
        zero = make_method(
            "clean",
            f"method.dual_teacher.balance_confident={str(balance).lower()}",
            f"method.dual_teacher.mix_loss={mix_loss}",
            "method.conf_thresh=0.3",
        )
        zero.set_class_prior(torch.zeros(K))
        out = zero.training_step(bx, bu, StepInfo(step=4 * k + 1, epoch_steps=4))
        assert (float(out[mix_key]) == 0.0) == balance, (balance, mix_loss, out[mix_key])
        assert (float(out["loss_ic"]) == 0.0) == balance


def test_paste_labelled_pastes_whole_true_classes_confidently():
    """paste_labelled: each mixed image gets, from one labelled image of the step, the pixels
    of half (rounded down) of the classes its true mask shows, never an ignored one, with the
    true label and confidence 1; every other pixel stays the mixed image's."""
    method = make_method("clean", "method.dual_teacher.paste_labelled=true")
    bx, g = make_batches()[0], torch.Generator().manual_seed(3)
    x, y = bx["image"], bx["mask"]
    x_mix = torch.randn(B, 3, H, W, generator=g)
    pl_mix = torch.randint(0, K, (B, H, W), generator=g)
    conf = torch.rand(B, H, W, generator=g) * 0.9
    torch.manual_seed(0)
    x_out, pl_out, conf_out = method._paste_labelled(x, y, x_mix, pl_mix, conf)
    pasted_any = False
    for i in range(B):
        pasted = (x_out[i] != x_mix[i]).any(0)  # (H, W)
        pasted_any |= bool(pasted.any())
        torch.testing.assert_close(pl_out[i][~pasted], pl_mix[i][~pasted])
        torch.testing.assert_close(conf_out[i][~pasted], conf[i][~pasted])
        assert (conf_out[i][pasted] == 1).all()
        # one labelled source j: the pasted pixels are its pixels and true labels, whole classes
        sources = [
            j for j in range(len(x))
            if torch.equal(x_out[i][:, pasted], x[j][:, pasted])
            and torch.equal(pl_out[i][pasted], y[j][pasted])
        ]  # fmt: skip
        assert sources, i
        j = sources[0]
        shown = set(torch.unique(y[j][y[j] != 255]).tolist())
        chosen = set(torch.unique(y[j][pasted]).tolist())
        assert 255 not in chosen and len(chosen) == len(shown) // 2
        assert torch.equal(pasted, torch.isin(y[j], torch.tensor(sorted(chosen))))
    assert pasted_any
    with pytest.raises(ConfigError, match="paste_labelled"):
        method._paste_labelled(x[..., :-1], y[..., :-1], x_mix, pl_mix, conf)


@pytest.mark.parametrize("k", [0, 1])
def test_paste_labelled_raises_the_confident_share_of_both_branches(k):
    """The pasted pixels count as confident in the CutMix and ClassMix terms (mask_ratio: the
    confident share of the mixed pixels), and the option off is the step as before."""
    bx, bu = make_batches()
    info = StepInfo(step=4 * k + 1, epoch_steps=4)
    ratio = {}
    for paste in ("false", "true"):
        method = make_method("clean", f"method.dual_teacher.paste_labelled={paste}")
        torch.manual_seed(5)
        out = method.training_step(bx, bu, info)
        ratio[paste] = float(out["mask_ratio"])
        if paste == "false":
            plain_method = make_method("clean")
            torch.manual_seed(5)
            plain = plain_method.training_step(bx, bu, info)
            torch.testing.assert_close(out["loss"], plain["loss"])
    assert ratio["true"] > ratio["false"] + 0.1, ratio


@pytest.mark.parametrize(("labelled", "pasted"), [(59, False), (60, True)])
def test_paste_labelled_null_pastes_from_60_labelled_images(tmp_path, labelled, pasted, capsys):
    """paste_labelled: null (the recipe's configs): the run turns pasting on from
    PASTE_MIN_LABELLED labelled images and says so; the run's config keeps null (a resumed run
    resolves it again), and true / false are kept as written whatever the labelled set."""
    assert dt_module.PASTE_MIN_LABELLED == 60
    for name in ("demo", "photos"):
        assert load_config(name).method.dual_teacher.paste_labelled is None
    over = [*TINY, "method.dual_teacher.mode=clean", f"data.demo.num_labeled={labelled}"]
    cfg = load_config("demo", [*over, f"train.out_dir={tmp_path / 'null'}"])
    run = build_training(cfg)
    assert run.method.dt.paste_labelled is pasted
    assert run.cfg.method.dual_teacher.paste_labelled is None
    said = "on" if pasted else "off"
    assert f"(paste_labelled: null): {said}, {labelled} labelled images" in capsys.readouterr().out
    for value in (True, False):
        cfg = load_config("demo", [*over, f"method.dual_teacher.paste_labelled={value}"])
        cfg.train.out_dir = str(tmp_path / str(value))
        assert build_training(cfg, verbose=False).method.dt.paste_labelled is value
