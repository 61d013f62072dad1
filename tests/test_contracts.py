"""Contracts of the three registries, parametrised over every registered name, so that a new
method, model or dataset is tested as soon as it is registered.

- ``METHODS`` (each with the config variants in ``METHOD_VARIANTS``): one training step gives
  finite values for every returned term and finite gradients on every student parameter, none
  on a teacher; the optimizer holds the student's parameters only; every tensor of the method
  belongs to a model of ``eval_models()``, each of them a submodule; after the optimizer step
  and ``after_step`` the teachers the method declares (``moving_teachers``) moved and every
  other teacher is bit-identical; ``state_dict`` loads into a fresh instance bit-identically
  and the next step then gives identical losses from the same random state.
- ``MODELS``: every model takes sides that are no multiples of its divisor, and its ONNX
  export (``export.export_onnx``, what ``dualteacher export`` runs) agrees with PyTorch.
- ``DATASETS``: every builder reads its tiny tree (``tests/trees.py``, listed in ``TREES``):
  class ids in ``[0, num_classes)`` or ignore, no masks on unlabelled samples, one colour per
  class, and the training / evaluation views have the documented shapes and dtypes.

Teachers are the models of ``eval_models()`` other than the student. A method whose
``after_step`` moves only some of them at a step says which in its step's output:
``active_teacher`` is the index of the teacher on duty among them (Dual Teacher).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dualteacher.config import IGNORE_INDEX, ModelConfig, load_config
from dualteacher.data import DATASETS, build_data
from dualteacher.data.base import EvalSet, LabeledTrainSet, UnlabeledTrainSet
from dualteacher.data.splits import write_split
from dualteacher.engine.run import build_training
from dualteacher.methods import METHODS, Method, StepInfo, build_method
from dualteacher.models import MODELS, build_model
from dualteacher.serving.export import check_onnx, export_onnx

from . import trees
from .conftest import TINY

# ------------------------------------------------------------------------------- methods
# Config variants that change which models a method holds or how it steps; a method not
# listed is tested with the TINY config as it is.
METHOD_VARIANTS: dict[str, list[str]] = {
    "dual_teacher": ["method.dual_teacher.mode=faithful", "method.dual_teacher.mode=clean"],
    "fixmatch": ["method.fixmatch.ema_teacher=false", "method.fixmatch.ema_teacher=true"],
}


def _method_cases():
    for name in METHODS:
        for variant in METHOD_VARIANTS.get(name, [None]):
            extra = [] if variant is None else [variant]
            tag = "" if variant is None else "-" + variant.rsplit(".", 1)[-1].replace("=", "-")
            yield pytest.param(name, extra, id=name + tag)


def _training(tmp_path: Path, name: str, extra: list[str]):
    """The engine's own training run of method ``name`` (unet-r18 from scratch, 32 px demo
    images, batches of 2, 5 classes) and its endless loaders."""
    # conf_thresh 0: every pseudo-label counts, so the unsupervised terms are not zero and
    # depend on the teachers' weights (a random network is never 95 % confident).
    overrides = [*TINY, f"method.name={name}", "method.conf_thresh=0.0", *extra]
    cfg = load_config("demo", [*overrides, f"train.out_dir={tmp_path / 'run'}"])
    run = build_training(cfg, verbose=False)
    it_x, it_u = (None if loader is None else iter(loader) for loader in run.batches())
    return run, it_x, it_u


def _next(it_x, it_u):
    return next(it_x), None if it_u is None else next(it_u)


def teachers(method: Method) -> dict[str, nn.Module]:
    """The method's teachers by name: its evaluated models other than the student."""
    return {k: m for k, m in method.eval_models().items() if m is not method.student}


def moving_teachers(method: Method, out: dict) -> set[str]:
    """The teachers that ``after_step`` moves at the step that returned ``out``: the one on
    duty if the step names it (``active_teacher``), else all of them."""
    names = list(teachers(method))
    if "active_teacher" in out:
        return {names[int(out["active_teacher"])]}
    return set(names)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


def _nonfinite(out: dict) -> list[str]:
    bad = []
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad.append(f"{key}={value}")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key}={value}")
    return bad


@contextmanager
def _rng(seed: int):
    """torch's, Python's and numpy's global RNGs seeded for a block, then restored."""
    state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])


@pytest.mark.parametrize(("name", "extra"), list(_method_cases()))
def test_method_step_trains_the_student_and_moves_only_the_declared_teachers(name, extra, tmp_path):
    run, it_x, it_u = _training(tmp_path, name, extra)
    method, optimizer = run.method, run.optimizer
    student = method.student
    named = teachers(method)
    assert next(iter(method.eval_models().values())) is student, "the first eval model"

    # Every tensor of the method is the student's or a named teacher's: a model the method
    # keeps elsewhere is neither optimized (only the student is) nor validated nor exported.
    owned = {id(t) for m in (student, *named.values()) for t in (*m.parameters(), *m.buffers())}
    state = method.state_dict(keep_vars=True)
    stray = [k for k, t in state.items() if id(t) not in owned]
    assert not stray, f"{name}: tensors outside the student and eval_models(): {stray[:5]}"
    # ... and every model it validates is its submodule: saved, loaded and moved to the device.
    registered = {id(t) for t in state.values()}
    for m_name, m in method.eval_models().items():
        assert all(id(t) in registered for t in m.state_dict(keep_vars=True).values()), (
            f"{name}: {m_name} is not a submodule of the method (not in its state_dict)"
        )
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert in_optimizer == trainable, f"{name}: the optimizer must hold the student's params"

    # Two steps: the first of epoch 0 and of epoch 1 (Dual Teacher: each teacher on duty once).
    for step in (0, run.epoch_steps):
        info = StepInfo(step, run.epoch_steps)
        before = {k: _tensors(m) for k, m in named.items()}
        student_before = _tensors(student)
        method.train()
        optimizer.zero_grad(set_to_none=True)
        out = method.training_step(*_next(it_x, it_u), info)

        assert isinstance(out["loss"], torch.Tensor) and out["loss"].requires_grad
        assert out["loss"].dim() == 0
        assert not _nonfinite(out), f"{name} step {step}: non-finite {_nonfinite(out)}"
        out["loss"].backward()
        for k, p in student.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name}: student parameter {k} got no gradient"
                assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient of {k}"
        assert any(p.grad.abs().sum() > 0 for p in student.parameters() if p.requires_grad)
        for t_name, teacher in named.items():
            for k, p in teacher.named_parameters():
                assert p.grad is None, f"{name}: teacher {t_name} got a gradient at {k}"
                assert not p.requires_grad, f"{name}: {t_name}.{k} requires grad"

        optimizer.step()
        run.scheduler.step()
        method.after_step(info)

        moved_student = _tensors(student)
        assert any(not torch.equal(student_before[k], v) for k, v in moved_student.items())
        declared = moving_teachers(method, out)
        for t_name, teacher in named.items():
            now = _tensors(teacher)
            changed = [k for k, v in now.items() if not torch.equal(before[t_name][k], v)]
            if t_name in declared:
                params = {k for k, _ in teacher.named_parameters()}
                assert params & set(changed), f"{name} step {step}: {t_name} did not move"
            else:
                assert not changed, f"{name} step {step}: {t_name} (off duty) moved: {changed[:5]}"


@pytest.mark.parametrize(("name", "extra"), list(_method_cases()))
def test_method_state_dict_round_trips(name, extra, tmp_path):
    """After a step (teachers moved, BatchNorm statistics updated), a fresh instance loading
    the ``state_dict`` is bit-identical and steps exactly as the original."""
    run, it_x, it_u = _training(tmp_path, name, extra)
    method, cfg = run.method, run.cfg
    run.step(it_x, it_u, StepInfo(0, run.epoch_steps))
    run.optimizer.zero_grad(set_to_none=True)
    state = method.state_dict()

    torch.manual_seed(1234)  # other initial weights than the run's

    def make_model():
        return build_model(cfg.model, run.bundle.num_classes, verbose=False)

    fresh = build_method(cfg, make_model(), make_model)
    assert type(fresh) is type(method)
    assert any(not torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    fresh.load_state_dict(state)  # strict: every key on both sides
    if cfg.train.channels_last:  # the run's layout, as prepare_method gives it (kernels differ)
        fresh.to(memory_format=torch.channels_last)
    # method.class_weights come from the labelled masks, set by build_training (data and
    # config, not state: a resumed run recomputes them; tests/test_class_weights.py)
    fresh.set_class_weights(method.class_weights)
    loaded = fresh.state_dict()
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), f"{name}: {k} differs"

    for m_name, m in fresh.eval_models().items():
        reference = method.eval_models()[m_name].state_dict()
        same = all(torch.equal(v, reference[k]) for k, v in m.state_dict().items())
        assert same, f"{name}: {m_name} differs after loading the method's state_dict"

    info = StepInfo(1, run.epoch_steps)
    batch = _next(it_x, it_u)
    outs = []
    for m in (method, fresh):
        m.train()
        with _rng(7):
            out = m.training_step(*batch, info)
            out["loss"].backward()
            m.after_step(info)
        outs.append(out)
    assert outs[0].keys() == outs[1].keys(), f"{name}: {list(outs[0])} != {list(outs[1])}"
    for k, v in outs[0].items():
        same = torch.equal(v, outs[1][k]) if isinstance(v, torch.Tensor) else v == outs[1][k]
        assert same, f"{name}: {k} is {outs[1][k]} from the loaded copy, {v} from the original"
    grads = [[p.grad for p in m.student.parameters()] for m in (method, fresh)]
    assert all(torch.equal(a, b) for a, b in zip(*grads)), f"{name}: gradients differ"
    after = fresh.state_dict()
    differ = [k for k, v in method.state_dict().items() if not torch.equal(v, after[k])]
    assert not differ, f"{name}: after_step of the loaded copy differs at {differ[:5]}"


# -------------------------------------------------------------------------------- models
# The largest models, each with the smaller sibling of its family whose export stands for
# it: their ONNX export and check take 15-75 s each on 2 busy cores (the others 2-10 s), and
# they differ from the sibling only in depth and width (more of the same blocks), which is
# what test_large_models_are_built_from_their_exported_siblings_parts pins.
ONNX_SIBLING = {
    "deeplabv3plus-r101": "deeplabv3plus-r50",
    "segformer-b3": "segformer-b2",
    "segformer-b4": "segformer-b2",
    "segformer-b5": "segformer-b2",
    "dpt-dinov2-b": "dpt-dinov2-s",
}
NUM_CLASSES = 3


def _odd_sizes(d: int) -> list[tuple[int, int, int]]:
    """(batch, height, width) whose sides are no multiples of the divisor ``d``."""
    return [(2, d + 1, 2 * d - 1), (1, 2 * d + d // 2 + 1, d - 3 if d > 4 else d + 3)]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name), NUM_CLASSES, verbose=False).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_predicts_any_size(name):
    model = _model(name)
    d = MODELS[name].size_divisor
    assert model.size_divisor == d and model.num_classes == NUM_CLASSES and model.name == name
    for b, h, w in _odd_sizes(d):
        assert h % d and w % d
        with torch.no_grad():
            logits = model(torch.randn(b, 3, h, w))
        assert logits.shape == (b, NUM_CLASSES, h, w) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [n for n in MODELS if n not in ONNX_SIBLING])
def test_model_exports_to_onnx(name, tmp_path):
    """``export_onnx`` checks ONNX Runtime against PyTorch at two sizes itself (and refuses
    an export below its agreement); here the tolerance of test_export on top, at its sizes and
    at one more whose sides are no multiples of the divisor."""
    pytest.importorskip("onnxruntime", reason="the dev extra installs onnxruntime")
    model = _model(name)
    path = tmp_path / "model.onnx"
    info = export_onnx(model, path)
    check = info["check"] + check_onnx(model, path, sizes=_odd_sizes(model.size_divisor)[:1])
    for c in check:
        assert c["argmax_agreement"] >= 0.999, f"{name} at {c['shape']}: {c}"
        assert c["max_abs_diff"] <= 1e-3 * max(1.0, c["max_abs_logit"]), f"{name}: {c}"


def _parts(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


@pytest.mark.parametrize("name", list(ONNX_SIBLING))
def test_large_models_are_built_from_their_exported_siblings_parts(name):
    """A model whose export is not run above is the same class as its exported sibling, made
    of no kind of module the sibling lacks, with the same output contract: a block added to
    the large variant alone (an op ONNX might not take) fails here."""
    sibling = ONNX_SIBLING[name]
    assert sibling in MODELS and sibling not in ONNX_SIBLING
    big, small = _model(name), _model(sibling)
    assert type(big) is type(small)
    assert _parts(big) <= _parts(small), sorted(t.__name__ for t in _parts(big) - _parts(small))
    assert big.size_divisor == small.size_divisor
    n_big, n_small = (sum(p.numel() for p in m.parameters()) for m in (big, small))
    assert n_big > n_small  # the larger variant, not a copy of the sibling under its name


# ------------------------------------------------------------------------------ datasets
def _labelled_split(name: str, root: Path, tmp_path: Path) -> list[str]:
    """``data.labeled`` naming two labelled images, for layouts whose default split labels
    every training image: the others become the unlabelled pool."""
    cfg = load_config(None, [f"data.name={name}", f"data.root={root}"])
    split = tmp_path / "labeled.txt"
    write_split(split, build_data(cfg.data).labeled.entries[:2], root, with_masks=True)
    return [f"data.root={root}", f"data.labeled={split}"]


# Dataset name -> (tmp_path -> overrides that build it from a tiny tree), with labelled,
# unlabelled and validation images each.
TREES: dict[str, Callable[[Path], list[str]]] = {
    "demo": lambda tmp: [
        "data.demo.num_labeled=3",
        "data.demo.num_unlabeled=3",
        "data.demo.num_val=2",
        "data.demo.image_size=32",
    ],
    "voc": lambda tmp: [f"data.root={trees.make_voc(tmp)}"],
    "cityscapes": lambda tmp: _labelled_split("cityscapes", trees.make_cityscapes(tmp), tmp),
    "ade20k": lambda tmp: _labelled_split("ade20k", trees.make_ade20k(tmp), tmp),
    "folder": lambda tmp: [f"data.root={trees.make_folder(tmp)}"],
    "coco": lambda tmp: [f"data.root={trees.make_coco(tmp)}"],
    "cvat": lambda tmp: [f"data.root={trees.make_cvat(tmp)}"],
    "labelstudio": lambda tmp: [f"data.root={trees.make_labelstudio(tmp)}"],
}


def _check_mask(mask: np.ndarray | torch.Tensor, k: int, where: str) -> int:
    """Asserts every value is a class id or ignore; returns the number of labelled pixels."""
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= set(range(k)) | {IGNORE_INDEX}, (
        f"{where}: values {sorted(values)}, {k} classes"
    )
    return int((np.asarray(mask) != IGNORE_INDEX).sum())


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_builds_from_its_tiny_tree(name, tmp_path):
    if name not in TREES:
        pytest.fail(
            f"dataset {name!r} is registered in DATASETS but has no tiny tree: add a make_* "
            "to tests/trees.py (its exact on-disk layout) and an entry to TREES in "
            "tests/test_contracts.py"
        )
    crop = 32
    cfg = load_config(None, [f"data.name={name}", *TREES[name](tmp_path), f"data.crop_size={crop}"])
    bundle = build_data(cfg.data)
    k = bundle.num_classes
    assert k >= 2 and len(set(bundle.classes)) == k
    assert all(isinstance(c, str) and c for c in bundle.classes)
    assert len(bundle.palette) == k, f"{name}: {len(bundle.palette)} colours, {k} classes"
    assert all(len(c) == 3 and all(0 <= int(v) <= 255 for v in c) for c in bundle.palette)
    assert bundle.ignore_index == IGNORE_INDEX and k <= IGNORE_INDEX
    assert bundle.unlabeled is not None
    sets = {"labeled": bundle.labeled, "unlabeled": bundle.unlabeled, "val": bundle.val}
    assert all(len(s) > 0 for s in sets.values()), {w: len(s) for w, s in sets.items()}

    # What sources read: 8-bit RGB, masks of the image's size with class ids or ignore.
    for what in ("labeled", "val"):
        labelled = 0
        for i in range(len(sets[what])):
            s = sets[what].load(i)
            assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
            assert s.mask is not None and s.mask.shape == s.image.shape[:2], f"{what} {s.name}"
            labelled += _check_mask(s.mask, k, f"{name} {what} {s.name}")
        assert labelled > 0, f"{name}: no labelled pixel in the {what} set"
    for i in range(len(bundle.unlabeled)):
        assert bundle.unlabeled.load(i).mask is None, f"{name}: unlabelled sample {i} has a mask"

    # What the training step and the evaluation see.
    x = LabeledTrainSet(bundle.labeled, cfg.data)[(0, 0)]
    assert x["image"].shape == (3, crop, crop) and x["image"].dtype == torch.float32
    assert x["mask"].shape == (crop, crop) and x["mask"].dtype == torch.int64
    _check_mask(x["mask"], k, f"{name} labelled crop")
    u = UnlabeledTrainSet(bundle.unlabeled, cfg.data, with_strong=True, num_strong=2)[(0, 0)]
    assert set(u) == {"image", "image_s", "image_s2", "ignore"}, f"{name}: {set(u)}"
    for key in ("image", "image_s", "image_s2"):
        assert u[key].shape == (3, crop, crop) and u[key].dtype == torch.float32
    assert u["ignore"].shape == (crop, crop) and u["ignore"].dtype == torch.bool
    for i in range(len(bundle.val)):
        v = EvalSet(bundle.val, cfg.data)[i]
        h, w = v["image"].shape[1:]
        assert v["image"].shape[0] == 3 and v["image"].dtype == torch.float32
        assert v["mask"].shape == (h, w) and v["mask"].dtype == torch.int64
        _check_mask(v["mask"], k, f"{name} val {v['name']}")
