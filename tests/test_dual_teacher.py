import pytest
import torch

from dualteacher.config import load_config
from dualteacher.data.loaders import build_train_loaders
from dualteacher.engine.trainer import build_run
from dualteacher.methods import StepInfo
from dualteacher.methods.dual_teacher import active_teacher, ema_index

from .conftest import TINY

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
]


@pytest.mark.parametrize(("step", "epoch_steps", "every", "restart", "i"), EMA_INDEX_TABLE)
def test_ema_index_table(step, epoch_steps, every, restart, i):
    assert ema_index(step, epoch_steps, every, restart) == i


def _setup(mode, tmp_path):
    cfg = load_config("demo", [*TINY, f"method.dual_teacher.mode={mode}"])
    run = build_run(cfg)
    lx, lu = build_train_loaders(
        run.bundle,
        cfg.data,
        seed=0,
        start_step=0,
        need_unlabeled=True,
        need_strong=run.method.needs_strong_view,
    )
    return run.method, iter(lx), iter(lu)


def _flat(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_only_the_active_teacher_changes(mode, tmp_path):
    method, it_x, it_u = _setup(mode, tmp_path)
    opt = torch.optim.SGD(method.student.parameters(), lr=0.1)
    epoch_steps = 2
    for step in range(5):
        info = StepInfo(step, epoch_steps)
        k = active_teacher(info.epoch)
        before = [_flat(t) for t in method.teachers]
        out = method.training_step(next(it_x), next(it_u), info)
        assert out["active_teacher"] == k
        assert torch.isfinite(out["loss"]) and out["loss"] > 0
        assert ("loss_cutmix" in out) == (k == 0) and ("loss_classmix" in out) == (k == 1)
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


def test_global_ema_index_does_not_recopy(tmp_path):
    cfg = load_config("demo", [*TINY, "method.dual_teacher.ema_restart=false"])
    run = build_run(cfg)
    method = run.method
    method.teachers[1].load_state_dict(method.student.state_dict())
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_step(StepInfo(step=3, epoch_steps=3))  # epoch 1, first step of B's shift
    # momentum min(1 - 1/4, 0.99) = 0.75: teacher moved a quarter of the way
    delta = _flat(method.student) - _flat(method.teachers[1])
    assert torch.allclose(delta, torch.full_like(delta, 0.75), atol=1e-5)


def test_faithful_requires_equal_batches():
    from dualteacher.errors import ConfigError

    cfg = load_config("demo", [*TINY, "data.batch_size_u=4"])
    with pytest.raises(ConfigError, match="batch_size_u"):
        build_run(cfg)
