"""UniMatch V1: two independently CutMixed strong views, the FP stream, the loss weights."""

import pytest
import torch
import torch.nn as nn

from dualteacher.config import load_config
from dualteacher.engine.trainer import train
from dualteacher.methods import StepInfo
from dualteacher.methods import unimatch as unimatch_module
from dualteacher.models import build_model

from .conftest import TINY
from .test_fixmatch import (
    B_U,
    B_X,
    ForwardSpy,
    Recorder,
    check_mixed_targets,
    coded_batches,
    fake_labellers,
    make_method,
    source_of,
)


def _step_with_spies(monkeypatch, overrides=(), make_ce=None):
    """One UniMatch step on coded batches with every collaborator recorded. ``make_ce(spy)``
    may give a stand-in for ``masked_ce`` that can look at the recorded forwards."""
    method = make_method("unimatch", ["method.unimatch.cutmix_p=1.0", *overrides])
    spy = ForwardSpy(method)
    rec = {
        "boxes": Recorder(unimatch_module.unimatch_box_mask),
        "perm": Recorder(unimatch_module.partner_permutation),
        "ce": Recorder(make_ce(spy) if make_ce else unimatch_module.masked_ce),
    }
    monkeypatch.setattr(unimatch_module, "unimatch_box_mask", rec["boxes"])
    monkeypatch.setattr(unimatch_module, "partner_permutation", rec["perm"])
    monkeypatch.setattr(unimatch_module, "masked_ce", rec["ce"])
    rec["partner"], rec["weak"] = fake_labellers(unimatch_module, monkeypatch)
    batches = coded_batches(views=2)
    out = method.training_step(*batches, StepInfo(0, 10))
    return method, batches, out, rec, spy


def test_two_strong_views_get_independent_boxes_and_partner_targets(monkeypatch):
    method, (batch_x, batch_u), _, rec, spy = _step_with_spies(monkeypatch)
    boxes = [c[2] for c in rec["boxes"].calls]
    (perm,) = [c[2] for c in rec["perm"].calls]
    assert len(boxes) == 2 and all(box.flatten(1).any(1).all() for box in boxes)
    assert not torch.equal(boxes[0], boxes[1])  # two draws, not one box used twice
    # Forwards: [labelled + weak] with feature noise, then [strong 1 + strong 2].
    (x_joint, kw_joint, _), (x_strong, kw_strong, _) = spy.calls
    assert torch.equal(x_joint, torch.cat([batch_x["image"], batch_u["image"]]))
    assert isinstance(kw_joint["feature_noise"], nn.Dropout2d)
    assert kw_joint["feature_noise"].p == 0.5 and not kw_strong
    own = torch.arange(B_U).view(-1, 1, 1)
    for i, (box, view) in enumerate(zip(boxes, x_strong.chunk(2))):
        # View i holds the partner's view i inside its own box i and itself outside.
        assert torch.equal(source_of(view, i), torch.where(box, perm.view(-1, 1, 1), own))
    # The partners are labelled by the student in eval mode on the weak views.
    assert rec["partner"].calls[0][0][0] is method.student
    assert torch.equal(rec["partner"].calls[0][0][1], batch_u["image"])
    # Targets: stream i takes the partner's label / confidence / padding inside box i.
    ce_s1, ce_s2, _ = (c[0] for c in rec["ce"].calls)
    check_mixed_targets(ce_s1, boxes[0], perm, batch_u["ignore"])
    check_mixed_targets(ce_s2, boxes[1], perm, batch_u["ignore"])


def test_fp_stream_learns_the_clean_weak_prediction(monkeypatch):
    _, (_, batch_u), _, rec, spy = _step_with_spies(monkeypatch)
    _, _, (logits, logits_fp) = spy.calls[0]
    logits_w = rec["weak"].calls[0][0][0]
    assert torch.equal(logits_w, logits[B_X:]) and not logits_w.requires_grad
    fp_args = rec["ce"].calls[2][0]
    assert torch.equal(fp_args[0], logits_fp[B_X:])  # perturbed prediction of the weak view
    assert (fp_args[1] == 0).all()  # against the clean weak pseudo-label, no CutMix
    assert not fp_args[2].any()  # weak confidence 0.5 < 0.95: nothing kept
    assert torch.equal(fp_args[3], ~batch_u["ignore"])


@pytest.mark.parametrize(("strong_w", "fp_w"), [(0.25, 0.5), (0.1, 2.0)])
def test_loss_weights(monkeypatch, strong_w, fp_w):
    """Each unsupervised stream returns a known value; the total must weigh them as set."""
    value = {"s1": 1.0, "s2": 10.0, "fp": 100.0}

    def make_ce(spy):
        def fake_ce(logits, target, keep, valid, ignore_index=255):
            # Tell the streams apart by the logits they get (the recorded forward outputs).
            (_, _, (_, logits_fp)), (_, _, logits_s) = spy.calls
            refs = {"fp": logits_fp[B_X:], "s1": logits_s[:B_U], "s2": logits_s[B_U:]}
            (name,) = [n for n, ref in refs.items() if torch.equal(logits, ref)]
            return torch.tensor(value[name])

        return fake_ce

    overrides = [f"method.unimatch.strong_weight={strong_w}", f"method.unimatch.fp_weight={fp_w}"]
    *_, out, _, _ = _step_with_spies(monkeypatch, overrides, make_ce)
    assert (out["loss_s1"], out["loss_s2"], out["loss_fp"]) == (1.0, 10.0, 100.0)
    expected = (out["loss_x"] + strong_w * (1.0 + 10.0) + fp_w * 100.0) / 2
    assert torch.isclose(out["loss"], expected)


def test_feature_perturbation_touches_features_only():
    torch.manual_seed(0)
    model = build_model(load_config("demo").model, 5).eval()
    x = torch.randn(2, 3, 32, 32)  # a multiple of 16: the model pads nothing
    seen = []

    class Spy(nn.Module):  # records what it is asked to perturb, then zeroes it
        def forward(self, f):
            seen.append(f)
            return torch.zeros_like(f)

    with torch.no_grad():
        plain = model(x)
        logits, logits_fp = model(x, feature_noise=Spy())
        features = model.net.encoder(x)
        dropout = nn.Dropout2d(0.5).train()  # the noise stays on in an eval-mode model
        logits_d, logits_fp_d = model(x, feature_noise=dropout)
    assert all(f is not x for f in seen)  # never the input image
    assert len(seen) == len(features) - 1  # every encoder feature map besides it
    assert all(torch.equal(s, f) for s, f in zip(seen, features[1:]))
    # Clean logits are those of a plain forward (eval mode: BN does not mix the two halves).
    assert torch.allclose(logits, plain, atol=1e-5) and torch.allclose(logits_d, plain, atol=1e-5)
    assert not torch.allclose(logits_fp_d, plain, atol=1e-3)
    assert not torch.allclose(logits_fp, logits_fp_d)


def test_unimatch_trains_end_to_end_with_two_strong_views(tmp_path):
    cfg = load_config(
        "demo", [*TINY, "method.name=unimatch", "train.steps=2", f"train.out_dir={tmp_path}"]
    )
    result = train(cfg)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.miou))
    assert set(result.final) == {"student"}


def test_one_step_gives_finite_loss_and_gradients_on_the_student_only():
    method = make_method("unimatch")
    names = {n.split(".")[0] for n, _ in method.named_parameters()}
    assert names == {"student"}  # the FP dropout has no parameters, there is no teacher
    out = method.training_step(*coded_batches(views=2), StepInfo(0, 10))
    assert all(torch.isfinite(torch.as_tensor(v)) for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None for p in method.student.net.decoder.parameters())
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
