import pytest
import torch
import torch.nn as nn

from dualteacher.methods.ema import EMA, BufferPolicy, ema_momentum


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_momentum_schedule():
    assert ema_momentum(0, 0.99) == 0.0  # hard copy
    assert ema_momentum(1, 0.99) == pytest.approx(0.5)
    assert ema_momentum(2, 0.99) == pytest.approx(2 / 3)
    assert ema_momentum(99, 0.99) == pytest.approx(0.99)
    assert ema_momentum(10_000, 0.99) == 0.99


def test_ema_algebra_and_buffer_policies():
    student, teacher = _net(0), _net(1)
    student[1].running_mean.fill_(3.0)
    t0 = [p.clone() for p in teacher.parameters()]
    EMA(BufferPolicy.keep).update(teacher, student, momentum=0.75)
    for t, t_old, s in zip(teacher.parameters(), t0, student.parameters()):
        assert torch.allclose(t, 0.75 * t_old + 0.25 * s)
    assert torch.equal(teacher[1].running_mean, torch.zeros(4))  # keep: buffers untouched

    EMA(BufferPolicy.ema).update(teacher, student, momentum=0.5)
    assert torch.allclose(teacher[1].running_mean, torch.full((4,), 1.5))
    EMA(BufferPolicy.copy).update(teacher, student, momentum=0.5)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)

    EMA().update(teacher, student, momentum=0.0)  # momentum 0 copies the student
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)
