"""Dual Teacher: one student and two temporary teachers that take turns by epoch.

Na et al., "Switching Temporary Teachers for Semi-Supervised Semantic Segmentation", NeurIPS
2023, as the official code runs it (``docs/method.md``, "The training step"). One step:

1. the teacher on duty (``active_teacher``: A on even shifts, B on odd ones; a shift is
   ``switch_every`` epochs) labels the weak view ``x_u``: ``conf, pl = max(softmax)``;
2. teacher A's shift: the student learns from a CutMix of weak views plus ReCo-style jitter,
   blur and flip, each image's loss weighted by its share of confident pixels; teacher B's
   shift: from a ClassMix of strong views, weighted by the batch's share of confident pixels.
   One student forward on ``[labelled, mixed]`` also gives the supervised loss;
3. "IC": the student on the strong view against the teacher's confident (>= ``conf_thresh``)
   pseudo-labels of the weak view; ``loss = loss_x + loss_mix + ic_weight * loss_ic``;
4. after the optimizer step only the teacher on duty moves, by EMA of the student with momentum
   ``min(1 - 1/(i+1), cap)`` (``ema_index``: ``i`` restarts with every shift, officially).

The step reads as ``mode: clean``. Where ``mode: faithful`` keeps an official behaviour that
``clean`` changes, it is one field of ``DualTeacherFlags``, commented with its item id in
``docs/method.md`` (F1 ... F18) and tested in ``tests/test_dual_teacher.py``; that page and the
table "Dual Teacher: faithful and clean" in docs/methods.md list every field, and the official
behaviours neither mode reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dualteacher.config import Config, DualTeacherConfig, DualTeacherMode, MixLoss, Threshold
from dualteacher.data.transforms import denormalize
from dualteacher.errors import ConfigError
from dualteacher.methods.base import Batch, Method, StepInfo, phase
from dualteacher.methods.ema import EMA, BufferPolicy, ema_momentum, relative_distance
from dualteacher.methods.losses import masked_ce, pseudo_label
from dualteacher.methods.mixing import (
    classmix_mask,
    classmix_partners,
    cutmix_box_mask,
    mix,
    shuffled_partners,
)
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


@dataclass(frozen=True)
class DualTeacherFlags:
    """Where the two modes differ: each field True is the official code's behaviour (its
    item of ``docs/method.md``, "Faithful items", in the comment), False what ``clean`` does
    instead.

    Built once per run by ``resolve_flags``; the table "Dual Teacher: faithful and
    clean" has one row per field.
    """

    # F1: the EMA index restarts with every shift (method.dual_teacher.ema_restart, both modes).
    ema_restart: bool
    # F3: the IC loss's valid pixels and normaliser come from the *labelled* batch's ground
    # truth (its ignore pattern), not from the unlabelled crop's padding.
    ic_mask_from_labeled: bool
    # F4: the strong view is one ColorJitter + RandomGrayscale of the whole normalised batch,
    # made here (clamps to [0, 1]); clean: per-image, before normalisation, by the data
    # pipeline (``data.strong``).
    batch_jitter_strong_view: bool
    # F7: teachers predict in train mode (dropout on, BatchNorm on the batch's statistics).
    teachers_train_mode: bool
    # F11 (update_ema): the EMA averages parameters only; clean also averages BN buffers, which
    # eval-mode teachers use.
    ema_params_only: bool
    # F8: the CutMix weight uses the confidence of the un-mixed image.
    cutmix_unmixed_conf: bool
    # F8: ReCo's PIL round trip quantises the CutMix images and confidence to 8 bits.
    pil_8bit: bool
    # F12: the IC term takes its pseudo-labels from a second teacher forward.
    ic_second_teacher_forward: bool
    # F13: the unlabelled crop's padding counts as image in the unsupervised terms; clean:
    # pseudo-labels there are ignored and every normaliser counts valid pixels only.
    padding_in_unsup: bool
    # F14 (mmseg Pad): weak views padded bottom/right, image with 0 after normalisation
    # (the mean colour), mask with ignore; clean: at a random offset, image black.
    official_pad: bool


def resolve_flags(dt: DualTeacherConfig) -> DualTeacherFlags:
    """The flags of ``method.dual_teacher.mode`` (and the config keys that choose one)."""
    official = dt.mode == DualTeacherMode.faithful
    return DualTeacherFlags(
        ema_restart=dt.ema_restart,
        ic_mask_from_labeled=official,
        batch_jitter_strong_view=official,
        teachers_train_mode=official,
        ema_params_only=official,
        cutmix_unmixed_conf=official,
        pil_8bit=official,
        ic_second_teacher_forward=official,
        padding_in_unsup=official,
        official_pad=official,
    )


# paste_labelled: null turns pasting on from this many labelled images. On the gain suite's
# tuning draws it paid with 60 and 100 (+0.8, +2.0 mIoU) and not with 24 to 40 (-5.1 to +1.2,
# +0.6 on average), where half of one of so few labelled images fills every mixed image
# (docs/gain.md, "Labelled objects pasted").
PASTE_MIN_LABELLED = 60


def resolve_paste(dt: DualTeacherConfig, num_labelled: int) -> DualTeacherConfig:
    """``dt`` with ``paste_labelled: null`` made true or false by the labelled set's size."""
    if dt.paste_labelled is not None:
        return dt
    return replace(dt, paste_labelled=num_labelled >= PASTE_MIN_LABELLED)


# Official CutMix-branch augmentation (ReCo's ``batch_transform``) and faithful strong view.
RECO_JITTER = v2.ColorJitter((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))
BATCH_JITTER = v2.Compose([v2.ColorJitter(0.5, 0.5, 0.5, 0.25), v2.RandomGrayscale(p=0.2)])


def reco_augment(x, pl, conf, mean, std, pil_8bit: bool):
    """ReCo-style augmentation of the CutMix batch, per image, on de-normalised pixels: colour
    jitter (p = 0.8), Gaussian blur with sigma ~ U(0.15, 1.15) (p = 0.5), and a horizontal
    flip (p = 0.5) of image, pseudo-label and confidence together.

    ``x`` (B, 3, H, W) normalised, ``pl`` / ``conf`` (B, H, W). ``pil_8bit``: as the official
    PIL round trip, the image is 8-bit before and after, the confidence floored to 1/255.
    """
    out_x, out_pl, out_conf = [], [], []
    for xi, pli, ci in zip(x, pl, conf):
        img = denormalize(xi, mean, std).clamp(0, 1)
        if pil_8bit:
            img, ci = torch.floor(img * 255) / 255, torch.floor(ci * 255) / 255
        if torch.rand(1) > 0.2:
            img = RECO_JITTER(img)
        if torch.rand(1) > 0.5:
            sigma = float(torch.empty(1).uniform_(0.15, 1.15))
            img = TF.gaussian_blur(img, kernel_size=9, sigma=sigma)
        if torch.rand(1) > 0.5:
            img, pli, ci = img.flip(-1), pli.flip(-1), ci.flip(-1)
        if pil_8bit:
            img = torch.round(img * 255) / 255
        out_x.append(TF.normalize(img, list(mean), list(std)))
        out_pl.append(pli)
        out_conf.append(ci)
    return torch.stack(out_x), torch.stack(out_pl), torch.stack(out_conf)


def _sum_over_processes(stats: torch.Tensor) -> torch.Tensor:
    """``stats`` summed over every process under ``torchrun`` (in place); as is otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return stats


def bias_corrected(ema: torch.Tensor, seen: torch.Tensor, momentum: float) -> torch.Tensor:
    """An EMA started from 0 divided by ``1 - momentum ** seen`` (as Adam's moments): the
    average of the ``seen`` steps it took, from the first (``seen``: a count, or one per entry)."""
    return ema / (1 - momentum ** seen.float()).clamp(min=1e-12)


def rampup_weight(step: int, rampup_steps: int) -> float:
    """Sigmoid-shaped ramp from ~0.007 at step 0 to 1 at ``rampup_steps`` (and after)."""
    t = min(step / rampup_steps, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


class DualTeacher(Method):
    name = "dual_teacher"

    def __init__(self, student: SegModel, cfg: Config, make_model: Callable[[], SegModel]):
        super().__init__(student, cfg, make_model)
        self.dt = cfg.method.dual_teacher
        self.flags = resolve_flags(self.dt)
        self.conf_thresh = cfg.method.conf_thresh
        self.needs_strong_view = not self.flags.batch_jitter_strong_view
        self.official_pad = self.flags.official_pad
        if self.flags.ic_mask_from_labeled and (
            (cfg.data.batch_size_u or cfg.data.batch_size) != cfg.data.batch_size
        ):
            raise ConfigError(
                "method.dual_teacher.mode=faithful reuses the labelled batch's ignore mask for "
                "the unlabelled IC loss (as the official code does), so data.batch_size_u must "
                "equal data.batch_size; set data.batch_size_u=null or use mode=clean"
            )
        # Both modes (docs/method.md F10): each teacher is a fresh model of the student's
        # architecture, with the pretrained encoder and its own random decoder init, not a copy
        # of the student.
        self.teachers = nn.ModuleList([self.make_teacher(make_model) for _ in TEACHER_NAMES])
        self.ema = EMA(BufferPolicy.keep if self.flags.ema_params_only else BufferPolicy.ema)
        self.mean, self.std = cfg.data.mean, cfg.data.std
        self.class_adaptive = self.dt.threshold == Threshold.class_adaptive
        if self.class_adaptive:
            # class_conf (K,): EMA of the teacher's mean confidence on the pixels it labels c,
            # from 0; class_seen (K,): the steps that had class c, for the bias correction.
            # Buffers: checkpoints carry them, and resume continues them exactly.
            self.register_buffer("class_conf", torch.zeros(student.num_classes))
            self.register_buffer("class_seen", torch.zeros(student.num_classes, dtype=torch.long))

        self.align = self.dt.distribution_alignment
        self.balance = self.dt.balance_confident
        self.needs_class_prior = self.align or self.balance
        k = student.num_classes
        # class_prior (K,): the labelled masks' class shares (``set_class_prior``; uniform
        # until set). Not a buffer: every start recomputes it from the same labelled set.
        self.class_prior = torch.full((k,), 1.0 / k)
        if self.align:
            # pred_mean (K,): EMA of the teacher's mean softmax over valid unlabelled pixels,
            # from 0, pred_seen: its steps (bias correction); buffers, so resume is exact.
            self.register_buffer("pred_mean", torch.zeros(k))
            self.register_buffer("pred_seen", torch.zeros((), dtype=torch.long))
        if self.balance:
            # conf_share (K,): EMA of each class's share of the confident pseudo-labels, from 0;
            # conf_share_seen: its steps (bias correction); buffers, so resume is exact.
            self.register_buffer("conf_share", torch.zeros(k))
            self.register_buffer("conf_share_seen", torch.zeros((), dtype=torch.long))

    def set_class_prior(self, shares: torch.Tensor) -> None:
        self.class_prior = shares.float().to(self.class_prior.device)

    def active(self, info: StepInfo) -> int:
        return active_teacher(info.epoch, self.dt.switch_every)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student, **dict(zip(TEACHER_NAMES, self.teachers))}

    @torch.no_grad()
    def _predict(self, teacher: nn.Module, x: torch.Tensor, valid: torch.Tensor, first=True):
        """``conf, pl`` (B, H, W) of ``teacher`` on ``x``; ``pl`` is ignore where not ``valid``.
        ``first``: the step's first prediction, the one that updates the alignment's mean."""
        teacher.train(self.flags.teachers_train_mode)
        with phase("teacher_fwd"):
            prob, conf, pl = pseudo_label(teacher(x))
        if self.align:
            conf, pl = self._aligned(prob, valid, update=first)
        return conf, pl.masked_fill(~valid, self.ignore_index)

    @torch.no_grad()
    def _aligned(self, prob: torch.Tensor, valid: torch.Tensor, update: bool):
        """Distribution alignment: ``conf, pl`` (B, H, W) = max over classes of the softmax
        ``prob`` (B, K, H, W) times ``class_prior / mean prediction``, renormalised. With
        ``update``, the valid pixels' (B, H, W) mean softmax (all processes') first enters the
        running mean."""
        # Tensor-only branches: no host synchronisation on the step's hot path.
        k = prob.shape[1]
        m = self.dt.class_thresh_momentum
        if update:
            w = valid.unsqueeze(1).to(prob.dtype)  # (B, 1, H, W)
            stats = torch.cat([(prob * w).sum(dim=(0, 2, 3)), w.sum().reshape(1)])  # (K + 1,)
            stats = _sum_over_processes(stats).to(self.pred_mean)
            seen = stats[k] > 0  # a batch without valid pixels leaves the mean as it was
            step = m * self.pred_mean + (1 - m) * stats[:k] / stats[k].clamp(min=1)
            self.pred_mean.copy_(torch.where(seen, step, self.pred_mean))
            self.pred_seen += seen.long()
        # bias-corrected mean (sums to 1); before any update the ratio is 1: the plain softmax
        mean = bias_corrected(self.pred_mean, self.pred_seen, m)
        ratio = torch.where(
            self.pred_seen > 0, self.class_prior.to(mean) / mean.clamp(min=1e-8), 1.0
        ).to(prob)  # (K,)
        aligned = prob * ratio.view(1, k, 1, 1)
        return (aligned / aligned.sum(dim=1, keepdim=True)).max(dim=1)

    # ----------------------------------------------------------------------------------------
    def training_step(self, batch_x: Batch, batch_u: Batch | None, info: StepInfo) -> dict:
        assert batch_u is not None
        f = self.flags
        k = self.active(info)
        teacher = self.teachers[k]
        x, y = batch_x["image"], batch_x["mask"]  # (B, 3, H, W), (B, H, W)
        x_u = batch_u["image"]  # (B_u, 3, H, W) weak view
        valid_u = ~batch_u["ignore"]  # (B_u, H, W) image content, not padding
        if f.padding_in_unsup:
            valid_u = torch.ones_like(valid_u)
        if f.batch_jitter_strong_view:
            with phase("mixing"):
                x_s = BATCH_JITTER(x_u.clone())
        else:
            x_s = batch_u["image_s"]

        conf, pl = self._predict(teacher, x_u, valid_u)
        if self.class_adaptive:
            self._update_class_conf(conf, pl)
        if self.balance:
            self._update_conf_share(conf, pl)
        # fused_forward: the IC view rides along in the branch's student forward
        x_ic = x_s if self.dt.fused_forward else None
        if k == 0:
            loss_x, loss_mix, mask_ratio, logits_s = self._cutmix_branch(x, y, x_u, conf, pl, x_ic)
        else:
            loss_x, loss_mix, mask_ratio, logits_s = self._classmix_branch(
                x, y, x_s, conf, pl, x_ic
            )

        if f.ic_second_teacher_forward:  # differs from the first in train mode (dropout, BN)
            conf, pl = self._predict(teacher, x_u, valid_u, first=False)
        valid_ic = y != self.ignore_index if f.ic_mask_from_labeled else valid_u
        if logits_s is None:
            logits_s = self.student_forward(x_s)  # (B_u, K, H, W)
        loss_ic = masked_ce(
            logits_s, pl, self._confident(conf, pl), valid_ic, self.ignore_index, self._weigh(pl)
        )

        if self.dt.rampup_steps:
            w = rampup_weight(info.step, self.dt.rampup_steps)
            loss = loss_x + w * (loss_mix + self.dt.ic_weight * loss_ic)
        else:  # this order of additions: the official loss, bit for bit (float sums differ)
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
        i = ema_index(info.step, info.epoch_steps, self.dt.switch_every, self.flags.ema_restart)
        momentum = ema_momentum(i, self.cfg.method.ema_momentum)
        self.ema.update(self.teachers[self.active(info)], self.student, momentum)

    # ----------------------------------------------------------------------------------------
    def class_thresholds(self) -> torch.Tensor:
        """(K,) confidence threshold of each class: ``conf_thresh`` everywhere (``fixed``), or
        ``conf_thresh * m_c / max_k m_k`` (``class_adaptive``, ``m`` over the classes seen so
        far): the class the teacher is surest of keeps ``conf_thresh``, the others are lowered in
        proportion to the teacher's confidence in them; a class never seen keeps ``conf_thresh``.
        """
        k = self.student.num_classes
        if not self.class_adaptive:
            return torch.full((k,), self.conf_thresh)
        if not bool((self.class_seen > 0).any()):
            return torch.full((k,), self.conf_thresh, device=self.class_conf.device)
        seen = self.class_seen > 0
        m = bias_corrected(self.class_conf, self.class_seen, self.dt.class_thresh_momentum)
        scaled = self.conf_thresh * m / m[seen].max()
        return torch.where(seen, scaled, torch.full_like(m, self.conf_thresh))

    def class_balance(self) -> torch.Tensor:
        """(K,) weight of a confident pseudo-label of each class (``balance_confident``):
        ``min(1, p_c / q_c)``, ``p`` the labelled shares, ``q`` the bias-corrected running share
        of the confident pseudo-labels; 1 for a class not yet handed out, and 1 everywhere
        before the first step (or with the option off)."""
        k = self.student.num_classes
        if not self.balance:
            return torch.ones(k)
        q = bias_corrected(self.conf_share, self.conf_share_seen, self.dt.class_thresh_momentum)
        ratio = self.class_prior.to(q) / q.clamp(min=1e-8)
        return torch.where(q > 0, ratio.clamp(max=1.0), torch.ones_like(q))

    def _weigh(self, pl: torch.Tensor) -> torch.Tensor | None:
        """(B, H, W) weight of each pixel's pseudo-label ``pl`` (B, H, W) in the unsupervised
        losses, or None (every pixel 1: ``balance_confident`` off)."""
        if not self.balance:
            return None
        w = self.class_balance()
        return w[pl.clamp(max=len(w) - 1)]  # ignore pixels take any weight: masked by callers

    @torch.no_grad()
    def _update_conf_share(self, conf: torch.Tensor, pl: torch.Tensor) -> None:
        """One EMA step of ``conf_share`` from the class counts of this step's confident,
        valid pseudo-labels ``pl`` (B, H, W) (all processes' together); a step with none leaves
        it as it was."""
        k = len(self.conf_share)
        labels = pl[self._confident(conf, pl) & (pl != self.ignore_index)]
        counts = _sum_over_processes(torch.bincount(labels, minlength=k).float())
        counts = counts.to(self.conf_share)
        total = counts.sum()
        m = self.dt.class_thresh_momentum
        step = m * self.conf_share + (1 - m) * counts / total.clamp(min=1)
        self.conf_share.copy_(torch.where(total > 0, step, self.conf_share))
        self.conf_share_seen += (total > 0).long()

    def _confident(self, conf: torch.Tensor, pl: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: the pseudo-labels ``pl`` (B, H, W) whose confidence ``conf`` reaches
        their class's threshold (ignore pixels: compared with any class's, masked by callers)."""
        if not self.class_adaptive:
            return conf >= self.conf_thresh
        thresholds = self.class_thresholds().to(conf.device)
        return conf >= thresholds[pl.clamp(max=len(thresholds) - 1)]

    @torch.no_grad()
    def _update_class_conf(self, conf: torch.Tensor, pl: torch.Tensor) -> None:
        """One EMA step of ``class_conf`` from the teacher's ``conf, pl`` (B, H, W) on this step's
        unlabelled batch (all processes' pixels together); classes absent from it keep theirs."""
        k = len(self.class_conf)
        valid = pl != self.ignore_index
        labels = pl[valid]
        sums = torch.zeros(k, device=conf.device).index_add_(0, labels, conf[valid].float())
        counts = torch.bincount(labels, minlength=k).float()
        stats = _sum_over_processes(torch.cat([sums, counts]))
        sums, counts = stats[:k], stats[k:]
        present = (counts > 0).to(self.class_conf.device)
        mean = (sums / counts.clamp(min=1)).to(self.class_conf.device)
        m = self.dt.class_thresh_momentum
        self.class_conf.copy_(
            torch.where(present, m * self.class_conf + (1 - m) * mean, self.class_conf)
        )
        self.class_seen += present.long()

    def _forward_pair(self, x: torch.Tensor, x_u: torch.Tensor, x_ic: torch.Tensor | None):
        """One student forward on labelled + mixed unlabelled images (official batching), and
        the IC strong view ``x_ic`` too when given: logits (B, K, H, W), (B_u, K, H, W) and
        (B_u, K, H, W) or None."""
        parts = [x, x_u] if x_ic is None else [x, x_u, x_ic]
        logits = self.student_forward(torch.cat(parts))
        logits_x, logits_u, *rest = logits.split([len(p) for p in parts])
        return logits_x, logits_u, (rest[0] if rest else None)

    def _cutmix_branch(self, x, y, x_u, conf, pl, x_ic=None):
        with phase("mixing"):
            b, _, h, w = x_u.shape
            box = cutmix_box_mask(b, h, w, self.dt.cutmix_beta, device=x_u.device)  # (B, H, W)
            perm = shuffled_partners(b, device=x_u.device)
            x_mix = mix(box, x_u[perm], x_u)
            pl_mix = mix(box, pl[perm], pl)
            conf_w = conf if self.flags.cutmix_unmixed_conf else mix(box, conf[perm], conf)
            if self.dt.paste_labelled:
                x_mix, pl_mix, conf_w = self._paste_labelled(x, y, x_mix, pl_mix, conf_w)
            x_mix, pl_mix, conf_w = reco_augment(
                x_mix, pl_mix, conf_w, self.mean, self.std, self.flags.pil_8bit
            )

        logits_x, logits_u, logits_ic = self._forward_pair(x, x_mix, x_ic)
        loss_x = self.supervised_loss(logits_x, y)
        valid = pl_mix != self.ignore_index
        confident = self._confident(conf_w, pl_mix) & valid
        mask_ratio = confident.sum() / valid.sum().clamp(min=1)
        pixel_w = self._weigh(pl_mix)
        if self.dt.mix_loss == MixLoss.masked:
            loss_mix = masked_ce(logits_u, pl_mix, confident, valid, self.ignore_index, pixel_w)
            return loss_x, loss_mix, mask_ratio, logits_ic
        # Per image: weight = its share of confident pixels; loss = mean of the weighted CE
        # over the pixels with CE > 0 (ReCo's `compute_unsupervised_loss`).
        weight = confident.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)  # (B,)
        ce = F.cross_entropy(logits_u, pl_mix, reduction="none", ignore_index=self.ignore_index)
        if pixel_w is not None:
            ce = ce * pixel_w
        weighted = (weight.view(-1, 1, 1) * ce)[ce > 0]
        loss_mix = weighted.mean() if weighted.numel() else ce.sum() * 0
        return loss_x, loss_mix, mask_ratio, logits_ic

    def _paste_labelled(self, x, y, x_mix, pl_mix, conf_mix):
        """``paste_labelled``: onto each mixed image (B_u, 3, H, W) the pixels of half the
        classes (``classmix_mask``) of a labelled image drawn at random from the step's B,
        with their true labels and confidence 1; ignored labelled pixels are not pasted."""
        if x.shape[-2:] != x_mix.shape[-2:]:
            raise ConfigError(
                f"method.dual_teacher.paste_labelled: labelled crops {tuple(x.shape[-2:])} and "
                f"unlabelled crops {tuple(x_mix.shape[-2:])} differ; give both one crop size"
            )
        src = torch.randint(len(x), (len(x_mix),), device=x.device)  # (B_u,) labelled partner
        y_src = y[src]  # (B_u, H, W) true masks
        paste = classmix_mask(y_src, self.ignore_index)  # never picks the ignore value
        x_out = mix(paste, x[src], x_mix)
        pl_out = mix(paste, y_src, pl_mix)
        conf_out = mix(paste, torch.ones_like(conf_mix), conf_mix)
        return x_out, pl_out, conf_out

    def _classmix_branch(self, x, y, x_s, conf, pl, x_ic=None):
        with phase("mixing"):
            keep = classmix_mask(pl, self.ignore_index)  # (B, H, W) True: own pixel
            perm = classmix_partners(x_s.shape[0], device=x_s.device)
            x_cm = mix(keep, x_s, x_s[perm])
            # Mixing the softmax and taking its max = mixing confidence and label (the
            # official code mixes the softmax).
            conf_cm = mix(keep, conf, conf[perm])
            pl_cm = mix(keep, pl, pl[perm])
            if self.dt.paste_labelled:
                x_cm, pl_cm, conf_cm = self._paste_labelled(x, y, x_cm, pl_cm, conf_cm)

        logits_x, logits_u, logits_ic = self._forward_pair(x, x_cm, x_ic)
        loss_x = self.supervised_loss(logits_x, y)
        valid = pl_cm != self.ignore_index  # all pixels in faithful (padding_in_unsup)
        confident = self._confident(conf_cm, pl_cm) & valid
        weight = confident.sum() / valid.sum().clamp(min=1)  # one scalar for the batch
        pixel_w = self._weigh(pl_cm)
        if self.dt.mix_loss == MixLoss.masked:
            loss_mix = masked_ce(logits_u, pl_cm, confident, valid, self.ignore_index, pixel_w)
            return loss_x, loss_mix, weight, logits_ic
        ce = F.cross_entropy(logits_u, pl_cm, reduction="none", ignore_index=self.ignore_index)
        if pixel_w is not None:
            ce = ce * pixel_w
        loss_mix = (weight * ce).sum() / valid.sum().clamp(min=1)  # official: mean over pixels
        return loss_x, loss_mix, weight, logits_ic

    def diagnostics(self) -> dict[str, float]:
        """``teacher_a_dist`` / ``teacher_b_dist``: each teacher's relative parameter distance
        from the student (0 = a copy: a collapsed teacher; docs/methods.md, "How far are the
        teachers from the student?")."""
        out = {
            f"{name}_dist": relative_distance(t, self.student)
            for name, t in zip(TEACHER_NAMES, self.teachers)
        }
        if self.class_adaptive:  # the lowest class threshold: how far a class was let in
            out["threshold_min"] = float(self.class_thresholds().min())
        if self.balance:  # the most weighed-down class: how far the balance reaches
            out["balance_min"] = float(self.class_balance().min())
        return out
