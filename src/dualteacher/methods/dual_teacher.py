"""Dual Teacher: one student and two temporary teachers that take turns by epoch.

Na et al., "Switching Temporary Teachers for Semi-Supervised Semantic Segmentation", NeurIPS
2023; behaviour as in the official code (``shared/method/dual_teacher_spec.md`` section 2):

- ``active_teacher``: on even shifts teacher A predicts and the student learns from a CutMix of
  unlabelled images (plus ReCo-style jitter/blur/flip); on odd shifts teacher B predicts and the
  student learns from a ClassMix of strong views. A shift is ``switch_every`` epochs.
- Only the active teacher is updated, after each optimizer step, by EMA of the student with
  momentum ``min(1 - 1/(i+1), 0.99)``. In the official code ``i`` restarts at every shift, so the
  teacher is re-copied from the student when its shift begins (``ema_restart``).
- An extra "IC" term (weight 0.2) trains the student on a strong view against the teacher's
  confident (>= ``conf_thresh``) pseudo-labels of the weak view.

``mode: faithful`` keeps the official code's quirks (spec section 7): the IC mask comes from the
*labelled* batch's ignore pattern (item 3), the strong view is one colour jitter of the whole
normalised batch (item 4), teachers predict in train mode (item 7), the CutMix weight uses the
un-mixed, 8-bit quantised confidence (item 8). ``mode: clean`` fixes items 3, 4, 7 and 8 and
keeps padding out of every unsupervised term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dualteacher.config import Config, DualTeacherMode
from dualteacher.data.transforms import denormalize
from dualteacher.errors import ConfigError
from dualteacher.methods.base import Batch, Method, StepInfo, phase
from dualteacher.methods.ema import EMA, BufferPolicy, ema_momentum, relative_distance
from dualteacher.methods.losses import masked_ce, pseudo_label
from dualteacher.methods.mixing import classmix_mask, cutmix_box_mask, mix
from dualteacher.models import SegModel

TEACHER_NAMES = ("teacher_a", "teacher_b")
BRANCHES = ("cutmix", "classmix")  # the mixing of teacher A's and teacher B's shifts


def active_teacher(epoch: int, switch_every: int = 1) -> int:
    """The switching rule: index of the teacher on duty in ``epoch`` (0 = A, 1 = B).

    Shifts last ``switch_every`` epochs and alternate A, B, A, B, ...
    """
    return (epoch // switch_every) % 2


def ema_index(step: int, epoch_steps: int, switch_every: int, restart: bool) -> int:
    """The ``i`` of the EMA momentum ``min(1 - 1/(i+1), cap)`` at global ``step``.

    ``restart`` (official): steps since the current shift began, so ``i = 0`` - a hard copy of
    the student into the active teacher - at the first step of every shift. Otherwise the
    global step, and teachers average over the whole run.
    """
    return step % (epoch_steps * switch_every) if restart else step


class DualTeacher(Method):
    name = "dual_teacher"

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__(student, cfg, make_model)
        self.dt = cfg.method.dual_teacher
        self.conf_thresh = cfg.method.conf_thresh
        self.faithful = self.dt.mode == DualTeacherMode.faithful
        self.needs_strong_view = not self.faithful  # clean: per-image strong view from the data
        if self.faithful and (cfg.data.batch_size_u or cfg.data.batch_size) != cfg.data.batch_size:
            raise ConfigError(
                "method.dual_teacher.mode=faithful reuses the labelled batch's ignore mask for "
                "the unlabelled IC loss (as the official code does), so data.batch_size_u must "
                "equal data.batch_size; set data.batch_size_u=null or use mode=clean"
            )
        # Official init: same architecture and pretrained encoder, own random decoder init.
        self.teachers = nn.ModuleList([self.make_teacher(make_model) for _ in TEACHER_NAMES])
        self.ema = EMA(BufferPolicy.keep if self.faithful else BufferPolicy.ema)
        self.mean, self.std = cfg.data.mean, cfg.data.std
        # Faithful strong view: one ColorJitter + RandomGrayscale of the normalised batch.
        self.batch_jitter = v2.Compose(
            [v2.ColorJitter(0.5, 0.5, 0.5, 0.25), v2.RandomGrayscale(p=0.2)]
        )
        # ReCo-style augmentation of the CutMix branch (official `batch_transform`).
        self.reco_jitter = v2.ColorJitter((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))

    def active(self, info: StepInfo) -> int:
        return active_teacher(info.epoch, self.dt.switch_every)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student, **dict(zip(TEACHER_NAMES, self.teachers))}

    @torch.no_grad()
    def _predict(self, teacher: nn.Module, x: torch.Tensor):
        # Official: teachers predict in train mode (dropout on, BN on batch statistics).
        teacher.train(self.faithful)
        with phase("teacher_fwd"):
            return pseudo_label(teacher(x))

    # ----------------------------------------------------------------------------------------
    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        assert batch_u is not None
        k = self.active(info)
        teacher = self.teachers[k]
        x, y = batch_x["image"], batch_x["mask"]  # (B, 3, H, W), (B, H, W)
        x_u = batch_u["image"]  # (B_u, 3, H, W) weak view
        if self.faithful:
            valid_u = torch.ones_like(batch_u["ignore"])  # official: padding is not excluded
            with phase("mixing"):
                x_s = self.batch_jitter(x_u.clone())
        else:
            valid_u = ~batch_u["ignore"]
            x_s = batch_u["image_s"]

        _, conf, pl = self._predict(teacher, x_u)  # (B_u, H, W) each
        pl = pl.masked_fill(~valid_u, self.ignore_index)
        if k == 0:
            loss_x, loss_mix, mask_ratio = self._cutmix_branch(x, y, x_u, conf, pl)
        else:
            loss_x, loss_mix, mask_ratio = self._classmix_branch(x, y, x_s, conf, pl)
        loss_ic = self._ic_loss(teacher, x_u, x_s, conf, pl, y, valid_u)
        loss = loss_x + loss_mix + self.dt.ic_weight * loss_ic
        return {
            "loss": loss,
            "loss_x": loss_x,
            f"loss_{BRANCHES[k]}": loss_mix,
            "loss_ic": loss_ic,
            "mask_ratio": mask_ratio,
            "active_teacher": k,
        }

    def after_step(self, info: StepInfo) -> None:
        i = ema_index(info.step, info.epoch_steps, self.dt.switch_every, self.dt.ema_restart)
        momentum = ema_momentum(i, self.cfg.method.ema_momentum)
        self.ema.update(self.teachers[self.active(info)], self.student, momentum)

    # ----------------------------------------------------------------------------------------
    def _forward_pair(self, x: torch.Tensor, x_u: torch.Tensor):
        """One student forward on labelled + mixed unlabelled images (official batching)."""
        logits = self.student_forward(torch.cat([x, x_u]))
        return logits[: len(x)], logits[len(x) :]

    def _cutmix_branch(self, x, y, x_u, conf, pl):
        with phase("mixing"):
            b, _, h, w = x_u.shape
            box = cutmix_box_mask(b, h, w, self.dt.cutmix_beta, device=x_u.device)  # (B, H, W)
            perm = torch.randperm(b, device=x_u.device)
            x_mix = mix(box, x_u[perm], x_u)
            pl_mix = mix(box, pl[perm], pl)
            if self.faithful:
                # Official: the weight uses the un-mixed confidence after an 8-bit PIL round trip.
                conf_w = torch.floor(conf * 255) / 255
            else:
                conf_w = mix(box, conf[perm], conf)
            x_mix, pl_mix, conf_w = self._reco_augment(x_mix, pl_mix, conf_w)

        logits_x, logits_u = self._forward_pair(x, x_mix)
        loss_x = self.supervised_loss(logits_x, y)
        valid = pl_mix != self.ignore_index
        confident = (conf_w >= self.conf_thresh) & valid
        # Per image: weight = fraction of confident pixels; loss = mean of weighted CE over
        # pixels with CE > 0 (ReCo's `compute_unsupervised_loss`).
        weight = confident.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)  # (B,)
        ce = F.cross_entropy(logits_u, pl_mix, reduction="none", ignore_index=self.ignore_index)
        weighted = (weight.view(-1, 1, 1) * ce)[ce > 0]
        loss_mix = weighted.mean() if weighted.numel() else ce.sum() * 0
        mask_ratio = confident.sum() / valid.sum().clamp(min=1)
        return loss_x, loss_mix, mask_ratio

    def _classmix_branch(self, x, y, x_s, conf, pl):
        with phase("mixing"):
            b = x_s.shape[0]
            keep = classmix_mask(pl, self.ignore_index)  # (B, H, W) True: own pixel
            if b == 2:
                perm = torch.tensor([1, 0], device=x_s.device)
            else:
                perm = torch.randperm(b, device=x_s.device)
            x_cm = mix(keep, x_s, x_s[perm])
            # Mixing the softmax and taking its max = mixing confidence and label (official
            # mixes the softmax).
            conf_cm = mix(keep, conf, conf[perm])
            pl_cm = mix(keep, pl, pl[perm])

        logits_x, logits_u = self._forward_pair(x, x_cm)
        loss_x = self.supervised_loss(logits_x, y)
        valid = pl_cm != self.ignore_index
        confident = (conf_cm >= self.conf_thresh) & valid
        weight = confident.sum() / valid.sum().clamp(min=1)  # one scalar for the batch
        ce = F.cross_entropy(logits_u, pl_cm, reduction="none", ignore_index=self.ignore_index)
        if self.faithful:
            loss_mix = (weight * ce).mean()  # official: mean over all pixels
        else:
            loss_mix = (weight * ce).sum() / valid.sum().clamp(min=1)
        return loss_x, loss_mix, weight

    def _ic_loss(self, teacher, x_u, x_s, conf, pl, y, valid_u):
        if self.faithful:
            # Official: a second teacher forward (train mode, so dropout/BN make it differ) and
            # the mask's valid pixels taken from the labelled batch's ground truth.
            _, conf, pl = self._predict(teacher, x_u)
            valid = y != self.ignore_index
        else:
            valid = valid_u
        logits_s = self.student_forward(x_s)
        return masked_ce(logits_s, pl, conf >= self.conf_thresh, valid, self.ignore_index)

    def _reco_augment(self, x, pl, conf):
        """Per image: colour jitter (p=0.8), Gaussian blur sigma ~ U(0.15, 1.15) (p=0.5), joint
        horizontal flip of image, pseudo-label and confidence (p=0.5); on de-normalised pixels.
        """
        out_x, out_pl, out_conf = [], [], []
        for xi, pli, ci in zip(x, pl, conf):
            img = denormalize(xi, self.mean, self.std).clamp(0, 1)
            if self.faithful:
                img = torch.floor(img * 255) / 255  # official 8-bit PIL round trip
            if torch.rand(1) > 0.2:
                img = self.reco_jitter(img)
            if torch.rand(1) > 0.5:
                sigma = float(torch.empty(1).uniform_(0.15, 1.15))
                img = TF.gaussian_blur(img, kernel_size=9, sigma=sigma)
            if torch.rand(1) > 0.5:
                img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)
            out_x.append(TF.normalize(img, list(self.mean), list(self.std)))
            out_pl.append(pli)
            out_conf.append(ci)
        return torch.stack(out_x), torch.stack(out_pl), torch.stack(out_conf)

    def diagnostics(self) -> dict[str, float]:
        """``teacher_a_dist`` / ``teacher_b_dist``: each teacher's relative parameter distance
        from the student (0 = a copy: a collapsed teacher; see README "teacher distance")."""
        return {
            f"{name}_dist": relative_distance(t, self.student)
            for name, t in zip(TEACHER_NAMES, self.teachers)
        }
