"""UniMatch V1: FixMatch with two strong views and a feature-perturbation stream.

Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation",
CVPR 2023, as in its ``unimatch.py``. What it adds to ``fixmatch``:

- two strong views of each unlabelled crop (``image_s``, ``image_s2``: independent photometric
  augmentations from the data pipeline), each CutMixed with the partner through its *own* box;
  each view's target is the weak prediction with its box region replaced by the partner's
  (pseudo-label, confidence and padding mask alike);
- a feature-perturbation (FP) stream: the labelled and weak images go through the student once,
  and the decoder also decodes a copy of the encoder features with channel dropout
  (``Dropout2d(0.5)``, ``SegModel.forward(feature_noise=...)``); the perturbed prediction of
  the weak view is trained against the clean one's confident pseudo-labels;
- ``loss = (loss_x + 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp) / 2``, every unlabelled
  term a masked CE normalised by the number of non-padding pixels, threshold ``conf_thresh``.

As in UniMatch the weak view is labelled by the student in train mode (no gradient through the
pseudo-label) and the CutMix partners in eval mode; the partner is another image of the same
batch, see the sampling note in ``dualteacher.methods.fixmatch``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from dualteacher.config import Config
from dualteacher.methods.base import Batch, Method, StepInfo, phase
from dualteacher.methods.losses import eval_pseudo_label, masked_ce, pseudo_label
from dualteacher.methods.mixing import mix, partner_permutation, unimatch_box_mask
from dualteacher.models import SegModel


class UniMatch(Method):
    name = "unimatch"
    needs_strong_view = True
    num_strong_views = 2

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__(student, cfg, make_model)
        self.um = cfg.method.unimatch
        self.conf_thresh = cfg.method.conf_thresh
        # A parameter-free submodule: on in method.train(), as the engine sets for each step.
        self.fp_noise = nn.Dropout2d(self.um.fp_dropout)

    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        assert batch_u is not None
        x, y = batch_x["image"], batch_x["mask"]  # (B_x, 3, H, W), (B_x, H, W)
        x_u, valid = batch_u["image"], ~batch_u["ignore"]  # (B_u, 3, H, W), (B_u, H, W)
        b, _, h, w = x_u.shape
        with phase("mixing"):
            perm = partner_permutation(b, x_u.device)  # one partner per image for both views
            # Independent boxes: each strong view takes its own region of the partner.
            boxes = [
                unimatch_box_mask(b, h, w, self.um.cutmix_p, device=x_u.device) for _ in range(2)
            ]
            views = (batch_u["image_s"], batch_u["image_s2"])  # (B_u, 3, H, W) each
            x_s = [mix(box, v[perm], v) for box, v in zip(boxes, views)]

        _, conf_p, pl_p = eval_pseudo_label(self.student, x_u)  # partners, eval mode
        logits, logits_fp = self.student_forward(torch.cat([x, x_u]), feature_noise=self.fp_noise)
        logits_x, logits_w = logits.split([len(x), b])
        logits_fp = logits_fp[len(x) :]  # (B_u, K, H, W) weak view decoded from dropped features
        logits_s1, logits_s2 = self.student_forward(torch.cat(x_s)).chunk(2)
        _, conf, pl = pseudo_label(logits_w.detach())  # (B_u, H, W) each

        loss_x = self.supervised_loss(logits_x, y)
        loss_s1, loss_s2 = (
            self._mixed_loss(logits_s, box, perm, (pl, conf, valid), (pl_p, conf_p, valid))
            for logits_s, box in zip((logits_s1, logits_s2), boxes)
        )
        confident = conf >= self.conf_thresh
        loss_fp = masked_ce(logits_fp, pl, confident, valid, self.ignore_index)
        loss_u = self.um.strong_weight * (loss_s1 + loss_s2) + self.um.fp_weight * loss_fp
        loss = (loss_x + loss_u) / 2
        mask_ratio = (confident & valid).sum() / valid.sum().clamp(min=1)
        return {
            "loss": loss,
            "loss_x": loss_x,
            "loss_s1": loss_s1,
            "loss_s2": loss_s2,
            "loss_fp": loss_fp,
            "mask_ratio": mask_ratio,
        }

    def _mixed_loss(self, logits_s, box, perm, own, partner) -> torch.Tensor:
        """Masked CE of a CutMixed strong view: ``own`` (pseudo-label, confidence, valid) of
        the weak view outside ``box``, the ``partner``'s (permuted by ``perm``) inside."""
        pl, conf, valid = (mix(box, t_p[perm], t) for t, t_p in zip(own, partner))
        return masked_ce(logits_s, pl, conf >= self.conf_thresh, valid, self.ignore_index)
