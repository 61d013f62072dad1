"""FixMatch (UniMatch's baseline): targets of the CutMixed strong view, loss, labellers."""

import pytest
import torch

from dualteacher.config import load_config
from dualteacher.data.base import strong_key
from dualteacher.engine.trainer import train
from dualteacher.methods import StepInfo, build_method
from dualteacher.methods import fixmatch as fixmatch_module
from dualteacher.models import build_model

from .conftest import TINY

NUM_CLASSES, SIZE, B_X, B_U = 5, 32, 2, 3
PARTNER_CONF, WEAK_CONF = 0.99, 0.5  # above / below conf_thresh 0.95


def make_method(name: str, overrides=()):
    cfg = load_config("demo", [*TINY, f"method.name={name}", *overrides])
    torch.manual_seed(0)
    student = build_model(cfg.model, NUM_CLASSES)
    return build_method(cfg, student, lambda: build_model(cfg.model, NUM_CLASSES))


def coded_batches(views: int = 1):
    """Random labelled batch; unlabelled batch whose strong view ``i`` of image ``k`` is the
    constant ``100 * i + k`` (so every pixel of a mixed view tells its source image), and whose
    image ``k`` has its top ``3 k`` rows marked as padding."""
    g = torch.Generator().manual_seed(0)
    batch_x = {
        "image": torch.randn(B_X, 3, SIZE, SIZE, generator=g),
        "mask": torch.randint(0, NUM_CLASSES, (B_X, SIZE, SIZE), generator=g),
    }
    ignore = torch.zeros(B_U, SIZE, SIZE, dtype=torch.bool)
    for k in range(B_U):
        ignore[k, : 3 * k] = True
    batch_u = {"image": torch.randn(B_U, 3, SIZE, SIZE, generator=g), "ignore": ignore}
    for i in range(views):
        code = 100.0 * i + torch.arange(B_U, dtype=torch.float32)
        batch_u[strong_key(i)] = code.view(B_U, 1, 1, 1).expand(B_U, 3, SIZE, SIZE).clone()
    return batch_x, batch_u


class ForwardSpy:
    """Stands in for ``method.student_forward`` and records ``(input, kwargs, output)``."""

    def __init__(self, method):
        self.forward, self.calls = method.student_forward, []
        object.__setattr__(method, "student_forward", self)

    def __call__(self, x, **kwargs):
        out = self.forward(x, **kwargs)
        self.calls.append((x, kwargs, out))
        return out


class Recorder:
    """Wraps a function, recording each call's arguments and result."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def fake_labellers(module, monkeypatch):
    """Partner labeller (eval mode): image k -> class k + 1 at confidence 0.99; weak-view
    labeller: class 0 at confidence 0.5. Returns the recorders of both."""

    def partner(model, x):
        pl = (torch.arange(len(x)) + 1).view(-1, 1, 1).expand(len(x), *x.shape[-2:]).clone()
        return None, torch.full(pl.shape, PARTNER_CONF), pl

    def weak(logits):
        shape = (logits.shape[0], *logits.shape[-2:])
        return None, torch.full(shape, WEAK_CONF), torch.zeros(shape, dtype=torch.long)

    rec_partner, rec_weak = Recorder(partner), Recorder(weak)
    monkeypatch.setattr(module, "eval_pseudo_label", rec_partner)
    monkeypatch.setattr(module, "pseudo_label", rec_weak)
    return rec_partner, rec_weak


def check_mixed_targets(args, box, perm, ignore):
    """``masked_ce`` args of a CutMixed stream: inside ``box`` the partner's class, confidence
    and padding, outside the image's own weak-view ones."""
    _, target, keep, valid = args[:4]
    for k in range(B_U):
        inside = box[k]
        assert (target[k][inside] == int(perm[k]) + 1).all()  # the partner's pseudo-label
        assert (target[k][~inside] == 0).all()  # own weak-view pseudo-label
        assert torch.equal(keep[k], inside)  # only the partner's 0.99 clears 0.95
        assert torch.equal(valid[k], torch.where(inside, ~ignore[perm[k]], ~ignore[k]))


def source_of(view_input, i):
    """Source image index of every pixel of a mixed strong view ``i`` (see coded_batches)."""
    return (view_input[:, 0] - 100 * i).round().long()


def test_strong_view_and_its_targets_are_cutmixed_with_the_partner(monkeypatch):
    method = make_method("fixmatch", ["method.fixmatch.cutmix_p=1.0"])
    rec_partner, rec_weak = fake_labellers(fixmatch_module, monkeypatch)
    boxes = Recorder(fixmatch_module.unimatch_box_mask)
    perms = Recorder(fixmatch_module.partner_permutation)
    ce = Recorder(fixmatch_module.masked_ce)
    for name, rec in (("unimatch_box_mask", boxes), ("partner_permutation", perms)):
        monkeypatch.setattr(fixmatch_module, name, rec)
    monkeypatch.setattr(fixmatch_module, "masked_ce", ce)
    spy = ForwardSpy(method)
    batch_x, batch_u = coded_batches()
    method.training_step(batch_x, batch_u, StepInfo(0, 10))

    (box,), (perm,) = [c[2] for c in boxes.calls], [c[2] for c in perms.calls]
    assert box.flatten(1).any(1).all()  # cutmix_p = 1: every image has a box
    assert (perm != torch.arange(B_U)).all()  # partners are other images
    # Teacher-free: the partners are labelled by the student (eval mode), the weak views by
    # the student's train-mode forward on labelled + weak images, without gradient.
    assert rec_partner.calls[0][0][0] is method.student
    assert torch.equal(rec_partner.calls[0][0][1], batch_u["image"])
    (x_joint, _, logits_joint), (x_strong, _, _) = spy.calls
    assert torch.equal(x_joint, torch.cat([batch_x["image"], batch_u["image"]]))
    logits_w = rec_weak.calls[0][0][0]
    assert torch.equal(logits_w, logits_joint[B_X:]) and not logits_w.requires_grad
    # The strong view carries the partner's strong view inside the box, its own outside.
    own = torch.arange(B_U).view(-1, 1, 1)
    assert torch.equal(source_of(x_strong, 0), torch.where(box, perm.view(-1, 1, 1), own))
    check_mixed_targets(ce.calls[0][0], box, perm, batch_u["ignore"])


def test_loss_is_mean_of_supervised_and_strong_terms(monkeypatch):
    method = make_method("fixmatch")
    monkeypatch.setattr(fixmatch_module, "masked_ce", lambda *a, **k: torch.tensor(7.0))
    out = method.training_step(*coded_batches(), StepInfo(0, 10))
    assert out["loss_s"] == 7.0
    assert torch.isclose(out["loss"], (out["loss_x"] + 7.0) / 2)


def test_ema_teacher_labels_and_only_the_student_learns(monkeypatch):
    method = make_method("fixmatch", ["method.fixmatch.ema_teacher=true"])
    assert set(method.eval_models()) == {"student", "teacher"}
    labeller = Recorder(fixmatch_module.eval_pseudo_label)
    monkeypatch.setattr(fixmatch_module, "eval_pseudo_label", labeller)
    spy = ForwardSpy(method)
    batch_x, batch_u = coded_batches()
    out = method.training_step(batch_x, batch_u, StepInfo(0, 10))
    assert [c[0][0] for c in labeller.calls] == [method.teacher]  # one labeller call
    assert torch.equal(spy.calls[0][0], batch_x["image"])  # the student sees no weak view
    out["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.net.decoder.parameters())
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.01)
    method.after_step(StepInfo(0, 10))  # momentum 0 at step 0: the teacher copies the student
    for t, s in zip(method.teacher.state_dict().values(), method.student.state_dict().values()):
        assert torch.equal(t, s)


@pytest.mark.parametrize("extra", [[], ["method.fixmatch.ema_teacher=true"]])
def test_fixmatch_trains_end_to_end(tmp_path, extra):
    cfg = load_config(
        "demo",
        [*TINY, "method.name=fixmatch", "train.steps=2", *extra, f"train.out_dir={tmp_path}"],
    )
    result = train(cfg)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.miou))
    assert ("teacher" in result.final) == bool(extra)
