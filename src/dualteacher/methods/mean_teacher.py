"""Mean Teacher: one persistent EMA teacher (Tarvainen & Valpola, 2017).

Segmentation form as in French et al. (2020) and UniMatch's baselines: the teacher (eval mode)
labels the weak view; the student learns on a CutMix of the strong views against the mixed,
confident (>= ``conf_thresh``) pseudo-labels. The teacher is the EMA of the student with
momentum ``min(1 - 1/(step+1), 0.99)`` over the whole run: the single-teacher counterpart of
Dual Teacher, whose coupling with the student Dual Teacher sets out to avoid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from dualteacher.config import Config
from dualteacher.methods.base import Batch, Method, StepInfo, phase
from dualteacher.methods.ema import EMA, BufferPolicy, ema_momentum
from dualteacher.methods.losses import masked_ce, pseudo_label
from dualteacher.methods.mixing import cutmix_box_mask, mix
from dualteacher.models import SegModel


class MeanTeacher(Method):
    name = "mean_teacher"
    needs_strong_view = True

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__(student, cfg, make_model)
        self.teacher = self.make_teacher(make_model)
        self.teacher.load_state_dict(student.state_dict())
        self.ema = EMA(BufferPolicy.ema)  # the teacher predicts in eval mode: average BN stats

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher}

    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        assert batch_u is not None
        x, y = batch_x["image"], batch_x["mask"]
        x_u, x_s, valid = batch_u["image"], batch_u["image_s"], ~batch_u["ignore"]
        self.teacher.eval()
        with torch.no_grad(), phase("teacher_fwd"):
            _, conf, pl = pseudo_label(self.teacher(x_u))  # (B, H, W)

        with phase("mixing"):
            b, _, h, w = x_s.shape
            box = cutmix_box_mask(b, h, w, device=x_s.device)  # (B, H, W)
            perm = torch.randperm(b, device=x_s.device)
            x_mix = mix(box, x_s[perm], x_s)
            pl_mix, conf_mix, valid_mix = (mix(box, t[perm], t) for t in (pl, conf, valid))

        logits = self.student_forward(torch.cat([x, x_mix]))
        loss_x = self.supervised_loss(logits[: len(x)], y)
        keep = conf_mix >= self.cfg.method.conf_thresh
        loss_u = masked_ce(logits[len(x) :], pl_mix, keep, valid_mix, self.ignore_index)
        loss = loss_x + self.cfg.method.mean_teacher.unsup_weight * loss_u
        mask_ratio = (keep & valid_mix).sum() / valid_mix.sum().clamp(min=1)
        return {"loss": loss, "loss_x": loss_x, "loss_u": loss_u, "mask_ratio": mask_ratio}

    def after_step(self, info: StepInfo) -> None:
        momentum = ema_momentum(info.step, self.cfg.method.ema_momentum)
        self.ema.update(self.teacher, self.student, momentum)
