"""FixMatch for segmentation, as the baseline of UniMatch.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020, in the segmentation form of UniMatch's ``fixmatch.py`` (Yang et al., "Revisiting
Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation", CVPR 2023):

- the student predicts the weak view of each unlabelled image without gradient, in the same
  train-mode forward as the labelled batch; where its confidence reaches ``conf_thresh``
  (0.95), the argmax is the pseudo-label of a strong view of the same crop;
- the strong view gets CutMix: with probability ``cutmix_p`` (0.5) a box (``unimatch_box_mask``)
  of a partner image's strong view is pasted in, and inside the box the pseudo-label,
  confidence and padding mask are the partner's, predicted by the student in eval mode;
- ``loss = (loss_x + loss_s) / 2``, ``loss_s`` the masked CE normalised by the number of
  non-padding pixels (``masked_ce``).

``method.fixmatch.ema_teacher: true`` replaces the student by an EMA teacher (eval mode) as the
labeller of the weak views and partners; the student then forwards the labelled batch alone.

Sampling difference from UniMatch's code: the partner is another image of the same unlabelled
batch (``partner_permutation``). UniMatch draws it from a second pass over the unlabelled
loader, which yields the same image indices in the same order, so its partner is another crop
of the same image; its author calls mixing different images the more correct choice, with
about the same results (LiheYoung/UniMatch issues 51 and 85).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from dualteacher.config import Config
from dualteacher.methods.base import Batch, Method, StepInfo, phase
from dualteacher.methods.ema import EMA, BufferPolicy, ema_momentum
from dualteacher.methods.losses import eval_pseudo_label, masked_ce, pseudo_label
from dualteacher.methods.mixing import mix, partner_permutation, unimatch_box_mask
from dualteacher.models import SegModel


class FixMatch(Method):
    name = "fixmatch"
    needs_strong_view = True

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__(student, cfg, make_model)
        self.fm = cfg.method.fixmatch
        self.conf_thresh = cfg.method.conf_thresh
        self.teacher: SegModel | None = None
        if self.fm.ema_teacher:
            self.teacher = self.make_teacher(make_model)
            self.teacher.load_state_dict(student.state_dict())
            self.ema = EMA(BufferPolicy.ema)  # the teacher predicts in eval mode

    def eval_models(self) -> dict[str, nn.Module]:
        models: dict[str, nn.Module] = {"student": self.student}
        if self.teacher is not None:
            models["teacher"] = self.teacher
        return models

    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        assert batch_u is not None
        x, y = batch_x["image"], batch_x["mask"]  # (B_x, 3, H, W), (B_x, H, W)
        x_u, x_s, valid = batch_u["image"], batch_u["image_s"], ~batch_u["ignore"]
        b, _, h, w = x_u.shape
        with phase("mixing"):
            perm = partner_permutation(b, x_u.device)  # (B_u,) partner of each image
            box = unimatch_box_mask(b, h, w, self.fm.cutmix_p, device=x_u.device)  # (B_u, H, W)
            x_s = mix(box, x_s[perm], x_s)

        if self.teacher is None:
            # Partners labelled by the student in eval mode, the weak views in train mode
            # together with the labelled batch (UniMatch's fixmatch.py).
            _, conf_p, pl_p = eval_pseudo_label(self.student, x_u)  # (B_u, H, W) each
            logits_x, logits_w = self.student_forward(torch.cat([x, x_u])).split([len(x), b])
            _, conf, pl = pseudo_label(logits_w.detach())
        else:
            _, conf, pl = eval_pseudo_label(self.teacher, x_u)
            conf_p, pl_p = conf, pl
            logits_x = self.student_forward(x)
        logits_s = self.student_forward(x_s)

        # Targets of the mixed strong view: own weak prediction outside the box, the
        # partner's inside it (pseudo-label, confidence and padding mask move together).
        with phase("mixing"):
            pl_s, conf_s, valid_s = (
                mix(box, t_p[perm], t) for t, t_p in ((pl, pl_p), (conf, conf_p), (valid, valid))
            )
        loss_x = self.supervised_loss(logits_x, y)
        keep = conf_s >= self.conf_thresh
        loss_s = masked_ce(logits_s, pl_s, keep, valid_s, self.ignore_index)
        loss = (loss_x + loss_s) / 2
        confident = (conf >= self.conf_thresh) & valid  # logged on the weak view, as UniMatch
        mask_ratio = confident.sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "loss_x": loss_x, "loss_s": loss_s, "mask_ratio": mask_ratio}

    def after_step(self, info: StepInfo) -> None:
        if self.teacher is not None:
            momentum = ema_momentum(info.step, self.cfg.method.ema_momentum)
            self.ema.update(self.teacher, self.student, momentum)
