"""The one EMA update of the project."""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn as nn


class BufferPolicy(StrEnum):
    """What an EMA update does with buffers (BatchNorm running mean / var / count).

    - ``keep``: buffers are not touched. The official Dual Teacher code averages parameters
      only; its teachers run in train mode, so their BN statistics are their own running
      averages over the batches they predict on.
    - ``ema``: floating-point buffers are averaged with the same momentum as the parameters,
      integer buffers (``num_batches_tracked``) copied. For teachers that predict in eval mode.
    - ``copy``: buffers are copied from the student.
    """

    keep = "keep"
    ema = "ema"
    copy = "copy"


def ema_momentum(i: int, cap: float) -> float:
    """``min(1 - 1/(i+1), cap)``: 0 at ``i = 0`` (a hard copy), then warming up to ``cap``."""
    return min(1.0 - 1.0 / (i + 1), cap)


class EMA:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` over parameters, and over
    buffers as ``buffers`` says (see ``BufferPolicy``). The teacher never gets gradients."""

    def __init__(self, buffers: BufferPolicy | str = BufferPolicy.keep):
        self.buffers = BufferPolicy(buffers)

    @torch.no_grad()
    def update(self, teacher: nn.Module, student: nn.Module, momentum: float) -> None:
        t_params = list(teacher.parameters())
        s_params = list(student.parameters())
        if len(t_params) != len(s_params):
            raise ValueError("teacher and student have different parameter lists")
        # lerp_(s, w): t + w * (s - t) = (1 - w) * t + w * s, with w = 1 - momentum
        torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - momentum)
        if self.buffers is BufferPolicy.keep:
            return
        # One fused update per kind of buffer, not one per buffer.
        averaged, copied = ([], []), ([], [])
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            average = self.buffers is BufferPolicy.ema and tb.is_floating_point()
            for side, t in zip(averaged if average else copied, (tb, sb)):
                side.append(t)
        if averaged[0]:
            torch._foreach_lerp_(*averaged, 1.0 - momentum)
        if copied[0]:
            torch._foreach_copy_(*copied)


@torch.no_grad()
def relative_distance(model: nn.Module, reference: nn.Module) -> float:
    """``||w - w_ref|| / ||w_ref||`` over all parameters: how far a teacher is from the
    student (0: a copy). One fused pass, one host synchronisation."""
    a = [p.detach() for p in model.parameters()]
    b = [p.detach() for p in reference.parameters()]
    diff = torch.stack(torch._foreach_norm(torch._foreach_sub(a, b))).norm()
    return float(diff / torch.stack(torch._foreach_norm(b)).norm().clamp(min=1e-12))
