"""Typed configuration: dataclasses are the schema, YAML files hold overrides.

A config is loaded as ``defaults <- YAML file <- key=value overrides`` with OmegaConf structured
configs, so an unknown key or a value of the wrong type is an error that lists the valid keys.
The resolved config is written to the run directory and into every checkpoint.

Sections: ``data``, ``model``, ``method``, ``optim``, ``train``, ``eval``. ``data.name``,
``model.name`` and ``method.name`` pick the registered dataset, model and method.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dualteacher.errors import ConfigError

IGNORE_INDEX = 255  # label value that is never trained on or scored (VOC border, padding)
MAX_IMAGE_PIXELS = 178_956_970  # data.max_image_pixels default: Pillow's bomb-error limit


# --------------------------------------------------------------------------------------- data
@dataclass
class DemoDataConfig:
    """The built-in demo dataset (see ``dualteacher.data.demo``)."""

    num_labeled: int = 24  # few labels: this is the semi-supervised setting
    num_unlabeled: int = 1200
    num_val: int = 200
    image_size: int = 64  # square images, in pixels
    seed: int = 0  # the whole dataset is a pure function of this seed


class StrongColour(StrEnum):
    """Whether the strong view changes colour (``data.strong.colour``)."""

    fixed = "fixed"  # hue and grayscale_p as set
    # measured at train start on the labelled set
    # (``data.check.LabelledStats.colour_separability``): when colour alone tells the classes
    # apart (score >= COLOUR_CUE), the strong view keeps it (hue 0, grayscale_p 0); otherwise
    # it varies it as UniMatch does (hue 0.25, grayscale_p 0.2)
    auto = "auto"


@dataclass
class StrongAugConfig:
    """Per-image photometric "strong" view, applied before normalisation (UniMatch style)."""

    colour: StrongColour = StrongColour.fixed
    jitter_p: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


@dataclass
class AnnotationsConfig:
    """``data.name=coco | cvat | labelstudio``: annotation tools' exports (docs/data.md)."""

    # The labelled and validation exports, relative to data.root: a COCO or Label Studio JSON
    # file, a CVAT "Segmentation mask 1.1" zip or its extracted folder. None: train.json /
    # val.json (coco, labelstudio), train(.zip) / val(.zip) (cvat).
    train: str | None = None
    val: str | None = None
    # Folder of the images the exports name, relative to data.root. Its images that no export
    # names are unlabelled, with those of data.root/unlabeled/ (as data.name=folder).
    images: str = "images"
    # Class names in class-id order. None: the order stated in docs/data.md (COCO: background,
    # then categories by id; CVAT: its label map; Label Studio: background, then labels sorted).
    classes: list[str] | None = None
    # The label (category, brush label) whose regions are ignore (255), never trained on.
    ignore_label: str = "ignore"


@dataclass
class DataConfig:
    name: str = "demo"  # registered dataset: see `dualteacher.data.DATASETS`
    root: str | None = None  # dataset root on disk (unused by the demo)
    # Split files (ids, image paths, or "image mask" pairs; see `dualteacher.data.splits`).
    # None: the dataset's default (docs/data.md).
    labeled: str | None = None  # labelled images
    unlabeled: str | None = None  # unlabelled images (their masks, if listed, are never read)
    # A split list shipped with the package (`dualteacher splits --list`, e.g. voc/u2pl_1_16):
    # sets labeled / unlabeled to shipped:NAME/labeled and shipped:NAME/unlabeled.
    split: str | None = None
    val: str | None = None  # validation images (e.g. a subset, or UniMatch's val.txt)
    # Selection split: the images whose student mIoU picks best.pt and the reported "best",
    # so the validation set that is reported chose nothing (``parse_select``). null or 0: off,
    # best.pt is chosen on the validation set itself. A number in (0, 1): that fraction of the
    # labelled set; a whole number >= 1: that many labelled images; held out of the labelled
    # training set, drawn from data.select_seed. Anything else: a split file (as data.val)
    # whose images are taken out of the labelled and unlabelled sets.
    select: str | None = None
    # Seed of the data.select draw, separate from train.seed: every method and training seed
    # of a comparison selects on the same images.
    select_seed: int = 0
    # Cache of the folder scans (an .npz file); None: RUN_DIR/data_index.npz for train and
    # compare, none for check. rescan: scan again even if the cached scan is still valid.
    index: str | None = None
    rescan: bool = False
    crop_size: int = 64  # square training crop
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor of the weak view
    base_size: int | None = None  # short side the scale factor applies to; None: image's own
    hflip: bool = True
    batch_size: int = 8  # labelled images per step and process
    batch_size_u: int | None = None  # unlabelled images per step and process; None: batch_size
    num_workers: int = 0  # DataLoader workers per loader; 0 loads in the main process
    pin_memory: bool | None = None  # page-locked batches for faster copies; None: on CUDA
    persistent_workers: bool = True  # keep workers alive between epochs (num_workers > 0)
    # A corrupt or inconsistent training file: false stops the run naming it (after a
    # checkpoint); true logs it, counts it and uses another sample (chosen from the draw's seed,
    # so resumed runs stay exact). Validation files are never skipped.
    skip_bad: bool = False
    # Images (and masks) of more pixels than this are refused with one line naming the file,
    # before their pixels are decoded: a small file can claim a huge size (a decompression
    # bomb). The default is Pillow's own hard limit (2 x 89,478,485: about 13,400 x 13,400),
    # so every image Pillow would open still opens; 0 or null: no limit. See SECURITY.md.
    max_image_pixels: int | None = MAX_IMAGE_PIXELS
    # Split-file entries (paths, ids) that lead outside data.root are refused, naming the
    # file and line: a split file from others must not make the run read files elsewhere.
    # true: allow them (your own lists of images kept on another disk).
    allow_outside_root: bool = False
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet statistics
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    strong: StrongAugConfig = field(default_factory=StrongAugConfig)
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    annotations: AnnotationsConfig = field(default_factory=AnnotationsConfig)


# -------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = "unet-r18"  # registered model: `dualteacher models` lists them
    # Encoder weights: a local file (.pth/.pt/.bin/.safetensors: torchvision/timm ResNet,
    # official SegFormer mit_bX.pth, official DINOv2 .pth, timm), or "hub" to download the
    # library's ImageNet / DINOv2 weights (needs network). None: random init.
    pretrained: str | None = None
    output_stride: int | None = None  # DeepLabV3+ only: 16 (None: default) or 8


# ------------------------------------------------------------------------------------- method
class DualTeacherMode(StrEnum):
    """What each mode reproduces and changes: ``docs/method.md`` items F1-F18, summed up in the
    table "Dual Teacher: faithful and clean" in docs/methods.md (one row per
    ``methods.dual_teacher.DualTeacherFlags`` field)."""

    faithful = "faithful"  # the official code's step, its quirks included
    clean = "clean"  # the same algorithm with the quirks the docs/methods.md table lists fixed


class Threshold(StrEnum):
    """Which pseudo-labels count as confident (``method.dual_teacher.threshold``)."""

    fixed = "fixed"  # one threshold, method.conf_thresh, for every class (official)
    class_adaptive = "class_adaptive"  # per class, scaled by the teacher's confidence in it


class MixLoss(StrEnum):
    """How the CutMix / ClassMix terms use the teacher's confidence (``docs/method.md``)."""

    # official (ReCo's loss): every pixel's CE against the teacher's argmax, weighted by the
    # share of confident pixels of its image (CutMix) or batch (ClassMix)
    weighted = "weighted"
    # CE on the confident pixels only, averaged over all valid pixels (UniMatch / the IC term)
    masked = "masked"


class ClassWeights(StrEnum):
    """How much a pixel of each class counts in the cross-entropies (``method.class_weights``)."""

    none = "none"  # every pixel the same (the published recipes)
    # w_c proportional to 1 / sqrt(f_c), f_c the class's share of the labelled pixels (read once
    # at train start), scaled so that a labelled pixel weighs 1 on average; a class with no
    # labelled pixel gets the largest weight. A 0.7 % defect class weighs about 12x its surface.
    sqrt_inverse = "sqrt_inverse"


@dataclass
class DualTeacherConfig:
    mode: DualTeacherMode = DualTeacherMode.faithful
    # Official code: the EMA index i restarts at every epoch, so momentum min(1 - 1/(i+1), cap)
    # is 0 at each shift start and the active teacher is re-copied from the student.
    # false: i counts steps globally, teachers are progressively averaged (docs/method.md F1).
    ema_restart: bool = True
    ic_weight: float = 0.2  # weight of the IC (strong-view consistency) term
    switch_every: int = 1  # epochs per shift
    cutmix_beta: float = 4.0  # box area ratio lam ~ Beta(a, a)
    # weighted (official): a confident background outweighs the image's uncertain objects, and
    # their wrong pseudo-labels are trained too; masked: only confident pixels are trained.
    mix_loss: MixLoss = MixLoss.weighted
    # > 0: the unsupervised terms (CutMix / ClassMix and IC) ramp up over this many steps,
    # weight exp(-5 (1 - step / rampup_steps)^2) (Laine & Aila 2017, Mean Teacher), so that
    # early, near-random teachers do not drown the labelled signal; 0 (official): full weight.
    rampup_steps: int = 0
    # fixed (official): a pixel's pseudo-label counts when its confidence >= method.conf_thresh.
    # class_adaptive: class c's threshold is conf_thresh * m_c / max_k m_k, m_c a running mean
    # (momentum class_thresh_momentum per step) of the teacher's confidence on the pixels it
    # labels c: classes the teacher is less sure of are not starved by the majority class
    # (docs/gain.md, "Confident pseudo-labels are all background").
    threshold: Threshold = Threshold.fixed
    class_thresh_momentum: float = 0.99
    # false (official): pseudo-labels are the teacher's softmax argmax. true: distribution
    # alignment (ReMixMatch, Berthelot et al. 2020): the softmax is multiplied by the labelled
    # masks' class shares over a running mean (momentum class_thresh_momentum) of the teacher's
    # own softmax on unlabelled pixels and renormalised, so that a class the teacher
    # under-predicts against the labels is not starved of pseudo-labels (docs/gain.md,
    # "Distribution alignment").
    distribution_alignment: bool = False
    # false (official): every confident pseudo-label weighs 1 in the unsupervised terms. true:
    # one of class c weighs min(1, p_c / q_c), p_c the labelled masks' share of c, q_c a running
    # mean (momentum class_thresh_momentum) of c's share of the teacher's confident pseudo-labels:
    # a class the teacher hands out more often than the labels hold it (in practice the
    # background) counts only as much as the labels say, and no class is weighed up, so no
    # unsure label gains weight (docs/gain.md, "Confident background, weighed down").
    balance_confident: bool = False
    # false (official): the mixed images hold unlabelled pixels only. true: each mixed image
    # also gets half the classes of a random labelled image of the step pasted in (ClassMix's
    # mask on the true mask), with their true labels, confident: a labelled object meets the
    # unlabelled images' backgrounds with a true label, not the teacher's guess (docs/gain.md,
    # "Coffee beans": ten textures +2 mIoU, two seeds). The pasted pixels are the labelled weak
    # view (no strong jitter). null (the recipe's configs): true when the labelled set holds at
    # least PASTE_MIN_LABELLED (60) images, resolved at train start: on the tuning draws it
    # paid with 60 and 100 labelled images and not with 24 to 40, where the same few objects
    # fill every mixed image (the demo's 24: -5.1; docs/gain.md, "Labelled objects pasted").
    paste_labelled: bool | None = False
    # false (official): the student's IC forward on the strong view is its own pass. true: it
    # joins the labelled + mixed batch, one student forward of B + 2 B_u images instead of two
    # (fewer, larger kernels: faster on a CPU, docs/scaling.md); the same losses, except that
    # BatchNorm's batch statistics then span all three groups.
    fused_forward: bool = False


@dataclass
class MeanTeacherConfig:
    unsup_weight: float = 1.0


@dataclass
class FixMatchConfig:
    """FixMatch as UniMatch's baseline (``dualteacher.methods.fixmatch``)."""

    # false (published): the student itself labels the weak view, without gradient;
    # true: an EMA teacher (momentum min(1 - 1/(i+1), method.ema_momentum)) labels it.
    ema_teacher: bool = False
    cutmix_p: float = 0.5  # probability that a strong view gets a CutMix box (UniMatch: 0.5)


@dataclass
class UniMatchConfig:
    """UniMatch V1 (``dualteacher.methods.unimatch``); defaults as published."""

    # loss = (loss_x + strong_weight * (loss_s1 + loss_s2) + fp_weight * loss_fp) / 2
    strong_weight: float = 0.25  # weight of each of the two strong-view streams
    fp_weight: float = 0.5  # weight of the feature-perturbation stream
    fp_dropout: float = 0.5  # channel dropout (Dropout2d) rate on the encoder features
    cutmix_p: float = 0.5  # probability that each strong view gets its own CutMix box


@dataclass
class MethodConfig:
    name: str = "dual_teacher"  # registered method: see dualteacher.methods.METHODS
    conf_thresh: float = 0.95  # confidence above which a pseudo-label counts
    ema_momentum: float = 0.99  # cap of the EMA momentum
    # Weigh each labelled pixel's cross-entropy by its class (every method's labelled term;
    # pseudo-labels keep weight 1: weighting them too made Dual Teacher collapse on a rare
    # defect class, docs/gain.md).
    class_weights: ClassWeights = ClassWeights.none
    dual_teacher: DualTeacherConfig = field(default_factory=DualTeacherConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)


# -------------------------------------------------------------------------------------- optim
class OptimName(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(StrEnum):
    poly = "poly"
    constant = "constant"


class LrScaling(StrEnum):
    none = "none"  # optim.lr as given, whatever the global batch
    linear = "linear"  # lr * global batch / ref_batch_size (Goyal et al. 2017; SGD recipes)
    sqrt = "sqrt"  # lr * sqrt(global batch / ref_batch_size) (often preferred for AdamW)


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd
    lr: float = 0.01  # learning rate of the backbone; the head gets lr * head_lr_mult
    head_lr_mult: float = 1.0
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    weight_decay: float = 1e-4
    schedule: Schedule = Schedule.poly
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear warm-up from lr * warmup_ratio
    warmup_ratio: float = 1e-6
    # Steps the poly schedule spans, whatever the run's length; past them the lr keeps its last
    # value. The official Dual Teacher code fixes 50000 (its 200 epochs at 1263 labels end near
    # step 31600, lr at 0.37x). None: the run's length (train.steps or train.epochs).
    schedule_steps: int | None = None
    # Scale lr with the global labelled batch (data.batch_size x processes x train.accum_steps)
    # relative to the batch the recipe's lr was tuned for; the effective lr is logged at start.
    scale_lr: LrScaling = LrScaling.none
    ref_batch_size: int | None = None  # the recipe's global batch; None: data.batch_size


# -------------------------------------------------------------------------------------- train
class EpochUnit(StrEnum):
    labeled = "labeled"  # one pass over the labelled set (official Dual Teacher code)
    unlabeled = "unlabeled"  # one pass over the unlabelled set (UniMatch / U2PL protocols)


class AmpMode(StrEnum):
    none = "none"  # float32 everywhere
    bf16 = "bf16"  # torch.autocast to bfloat16 (CUDA and CPU); no loss scaling needed
    fp16 = "fp16"  # torch.autocast to float16 with a GradScaler (CUDA)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in total (unless train.epochs is set)
    epochs: int | None = None  # if set, the run is epochs * steps per epoch (train.steps unused)
    epoch_unit: EpochUnit = EpochUnit.labeled  # what one epoch is a pass over
    epoch_steps: int | None = None  # steps per epoch; None: from epoch_unit and the batch size
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads; None: torch default
    out_dir: str | None = None  # run directory; None: runs/<config name>
    eval_every: int = 200  # steps between validations (the last step is always evaluated)
    # If set, validate every this many epochs instead (train.eval_every unused); the official
    # Dual Teacher code validates every epoch.
    eval_every_epochs: int | None = None
    eval_teachers: bool = True  # also evaluate every teacher
    log_every: int = 10
    ckpt_every: int = 200  # steps between writes of latest.pt
    keep_last: int = 2  # step_XXXXXXX.pt checkpoints kept besides latest.pt / best.pt; 0: none
    max_bad_steps: int = 5  # non-finite losses in a row that stop the run (each one is skipped)
    deterministic: bool = False  # deterministic torch algorithms: bit-identical CPU runs
    # Resuming with a config that changes the training (optim.*, method.*, augmentation, ...)
    # is an error unless this is true (e.g. to continue with a lower optim.lr).
    resume_with_changes: bool = False
    # A checkpoint whose weights start this run (student and teachers; a fresh schedule from
    # step 0, a new optimizer): continuing a trained model when new labels arrive. Recorded in
    # the run's checkpoints; a resumed run continues from its own checkpoint, not from this.
    init_from: str | None = None
    tensorboard: bool = True
    progress: bool = True  # tqdm progress bar
    # Wall-clock budget of the training steps (validation excluded), in minutes: the loop stops
    # after the step that exhausts it, with a final validation and checkpoint there. The LR
    # schedule still spans `steps`, so it is cut short (`dualteacher compare --minutes` picks
    # `steps` from a timing probe so that the schedule does complete). None: no budget.
    max_minutes: float | None = None
    curves: bool = True  # write curves.png (losses, mask ratio, val mIoU) at every validation
    amp: AmpMode = AmpMode.none  # mixed precision of the training forwards
    # NHWC memory format for models and images: convolutions run faster on CPU (oneDNN; the demo's
    # Dual Teacher step 1.5x, docs/scaling.md "CPU speed levers") and on recent GPUs.
    channels_last: bool = True
    compile: bool = False  # torch.compile the student's training forwards (first steps slow)
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    sync_bn: bool = True  # SyncBatchNorm in the student under DDP on CUDA (never on CPU)


# --------------------------------------------------------------------------------------- eval
class EvalMode(StrEnum):
    whole = "whole"  # the whole image at once (padded to the model's multiple)
    sliding = "sliding"  # windows of crop_size every stride pixels, logits averaged
    resize = "resize"  # resize the short side to short_side, predict, upsample back


@dataclass
class EvalConfig:
    mode: EvalMode = EvalMode.whole
    crop_size: int = 512  # sliding window size
    stride: int = 341  # sliding window stride
    short_side: int = 512  # resize mode
    batch_size: int = 16  # whole mode: images per forward (when sizes agree); sliding: windows


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------------------ value ranges
@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: ``low`` / ``high`` bounds (``None``: unbounded),
    each inclusive unless ``*_open``. A tuple value (``data.scale_range``) is checked element
    by element; ``None`` (an optional key left unset) always passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            a, b = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {a}{self.low:g}, {self.high:g}{b}"
        if self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        return f"{'less than' if self.high_open else 'at most'} {self.high:g}"


COUNT = Range(1)  # a positive whole number (steps, images, pixels)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
BELOW_ONE = Range(0, 1, high_open=True)  # momenta, dropout

# Every numeric key with the values it may take, checked once after loading (``check_values``);
# floats must also be finite everywhere. A numeric key that any value suits is in FREE_VALUES,
# one with a few allowed values in CHOICES (a test checks that together they cover the schema:
# a new numeric key needs its entry here).
VALUE_RANGES: dict[str, Range] = {
    "data.demo.num_labeled": COUNT,
    "data.demo.num_unlabeled": NON_NEGATIVE,
    "data.demo.num_val": COUNT,
    "data.demo.image_size": Range(8),
    "data.demo.seed": NON_NEGATIVE,
    "data.crop_size": COUNT,
    "data.scale_range": POSITIVE,
    "data.base_size": COUNT,
    "data.batch_size": COUNT,
    "data.batch_size_u": COUNT,
    "data.num_workers": NON_NEGATIVE,
    "data.select_seed": NON_NEGATIVE,
    "data.max_image_pixels": NON_NEGATIVE,  # 0: no limit
    "data.std": POSITIVE,
    "data.strong.jitter_p": PROBABILITY,
    "data.strong.brightness": NON_NEGATIVE,
    "data.strong.contrast": NON_NEGATIVE,
    "data.strong.saturation": NON_NEGATIVE,
    "data.strong.hue": Range(0, 0.5),
    "data.strong.grayscale_p": PROBABILITY,
    "data.strong.blur_p": PROBABILITY,
    "data.strong.blur_sigma": POSITIVE,
    "method.conf_thresh": PROBABILITY,
    "method.ema_momentum": PROBABILITY,
    "method.dual_teacher.ic_weight": NON_NEGATIVE,
    "method.dual_teacher.switch_every": COUNT,
    "method.dual_teacher.cutmix_beta": POSITIVE,
    "method.dual_teacher.rampup_steps": NON_NEGATIVE,
    "method.dual_teacher.class_thresh_momentum": PROBABILITY,
    "method.mean_teacher.unsup_weight": NON_NEGATIVE,
    "method.fixmatch.cutmix_p": PROBABILITY,
    "method.unimatch.strong_weight": NON_NEGATIVE,
    "method.unimatch.fp_weight": NON_NEGATIVE,
    "method.unimatch.fp_dropout": BELOW_ONE,
    "method.unimatch.cutmix_p": PROBABILITY,
    "optim.lr": POSITIVE,
    "optim.head_lr_mult": NON_NEGATIVE,
    "optim.momentum": BELOW_ONE,
    "optim.betas": BELOW_ONE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.poly_power": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.warmup_ratio": PROBABILITY,
    "optim.ref_batch_size": COUNT,
    "optim.schedule_steps": COUNT,
    "train.steps": COUNT,
    "train.epochs": COUNT,
    "train.epoch_steps": COUNT,
    "train.threads": COUNT,
    "train.eval_every": COUNT,
    "train.eval_every_epochs": COUNT,
    "train.log_every": COUNT,
    "train.ckpt_every": COUNT,
    "train.keep_last": NON_NEGATIVE,
    "train.max_bad_steps": COUNT,
    "train.max_minutes": POSITIVE,
    "train.accum_steps": COUNT,
    "eval.crop_size": COUNT,
    "eval.stride": COUNT,
    "eval.short_side": COUNT,
    "eval.batch_size": COUNT,
}
FREE_VALUES = ("train.seed", "data.mean")  # any finite number
ORDERED_PAIRS = ("data.scale_range", "data.strong.blur_sigma")  # (low, high): low <= high
CHOICES = {"model.output_stride": (8, 16)}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


SELECT_VALUES = (
    "must be a fraction of the labelled set in (0, 1), a whole number of labelled images, a "
    "split file, or null (off)"
)


def parse_select(value: str | float | None) -> tuple[str, Any]:
    """What ``data.select`` asks for: ``("off", None)``, ``("fraction", f)`` with f in (0, 1),
    ``("count", n)`` with n >= 1, or ``("file", path)``. A value that reads as a number is a
    number (a split file named like one needs a path: ``./10``).

    Raises:
        ConfigError: a negative or non-finite number, or a fractional one above 1.
    """
    if value is None:
        return "off", None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return "file", text
    if not math.isfinite(number) or number < 0 or (number > 1 and number != int(number)):
        raise ConfigError(
            f"bad value for config key 'data.select': data.select={text} {SELECT_VALUES}"
        )
    if number == 0:
        return "off", None
    if number < 1:
        return "fraction", number
    return "count", int(number)


def value_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``key`` (None when it is), per ``VALUE_RANGES``."""
    if key == "data.select":
        try:
            parse_select(value)
        except ConfigError:
            return SELECT_VALUES
        return None
    if value is None or isinstance(value, bool | str):
        if key == "train.device" and not DEVICE.match(str(value)):
            return "must be auto, cpu, cuda, cuda:N or mps"
        return None
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return "must be a finite number"
    rule = VALUE_RANGES.get(key)
    if rule is not None and not all(rule.ok(v) for v in values):
        return f"must be {'each ' if len(values) > 1 else ''}{rule.text()}"
    if key in CHOICES and value not in CHOICES[key]:
        return f"must be one of {', '.join(map(str, CHOICES[key]))} (or null)"
    if key in ORDERED_PAIRS and values[0] > values[1]:
        return "must be (low, high) with low <= high"
    return None


def check_values(cfg: Config, where=None) -> None:
    """Raise ``ConfigError`` for the first value outside its range (``VALUE_RANGES``), a
    non-finite float or an unknown device. ``where(key)`` says where a key was set."""
    for key, value in flatten(to_dict(cfg)).items():
        problem = value_problem(key, value)
        if problem is not None:
            source = where(key) if where else ""
            raise ConfigError(
                f"bad value for config key '{key}'{f' in {source}' if source else ''}: "
                f"{key}={_show(value)} {problem}"
            )


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------ loading
def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        name = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            keys += _valid_keys(v, name + ".")
        else:
            keys.append(name)
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    full_key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        section = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        node = OmegaConf.select(schema, section) if section else schema
        valid = _valid_keys(node, section + "." if section else "")
        close = difflib.get_close_matches(full_key, _valid_keys(schema), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return ConfigError(
            f"unknown config key '{full_key}' in {source}.{hint}\n"
            f"Valid keys here: {', '.join(valid)}"
        )
    msg = str(err).splitlines()[0]
    return ConfigError(f"bad value for config key '{full_key}' in {source}: {msg}")


def builtin_config_dir() -> Path:
    """Directory of the configs shipped with the package (``dualteacher configs`` lists them)."""
    return Path(__file__).parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or the name of a built-in config (``demo`` or ``demo.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    builtin = builtin_config_dir() / name
    if builtin.is_file() and len(p.parts) <= 2:
        return builtin
    raise ConfigError(
        f"config file not found: {path}. Give a YAML path or a built-in config name "
        f"(`dualteacher configs` lists them)."
    )


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where. YAML is only ever loaded safely, so a
    tag that would build a Python object (``!!python/object/apply:os.system``) is an error
    here, never run."""
    mark = getattr(e, "problem_mark", None)
    text = " ".join(str(getattr(e, "problem", None) or e).split())
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    if "python/" in text:
        text += "; tags that build Python objects are never loaded: remove the tag"
    return text


# Limits that guard against files from others (SECURITY.md). They come from the user only (the
# defaults, their YAML, their overrides), never from a ``base``: a stored config is part of a
# checkpoint or export, which may be someone else's, and must not lift them.
SAFETY_KEYS = ("data.max_image_pixels", "data.allow_outside_root")


def without_safety_keys(base: dict) -> dict:
    """``base`` without ``SAFETY_KEYS`` (a copy where one was there)."""
    out = base
    for key in SAFETY_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            out = {**out, section: {k: v for k, v in out[section].items() if k != name}}
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> Config:
    """Load a config: defaults, then ``base`` (e.g. a checkpoint's config), then the YAML file
    at ``path``, then ``key=value`` overrides.

    Raises:
        ConfigError: unknown key (the message lists the valid keys), a wrong type, or a value
            out of its range (``VALUE_RANGES``: e.g. ``train.steps=-5``, ``optim.lr=nan``).
    """
    schema = OmegaConf.structured(Config)
    merged = schema
    if base is not None:
        base = without_safety_keys(base)
        try:
            merged = OmegaConf.merge(merged, base)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, "stored config") from None
    if path is not None:
        cfg_path = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{cfg_path} is not valid YAML: {yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path} must hold a mapping of sections, got {type(loaded)}")
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, str(cfg_path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' is not of the form key=value (e.g. train.steps=10)"
            )
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as e:  # OmegaConf parses the value with a safe YAML loader
            raise ConfigError(f"override '{item}': {yaml_problem(e)}") from None
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override '{item}'") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except (ValidationError, OmegaConfBaseException) as e:
        raise _explain(e, schema, str(path)) from None
    assert isinstance(cfg, Config)

    def where(key: str) -> str:
        given = [o for o in overrides if o.split("=", 1)[0].strip() == key]
        if given:
            return f"override '{given[-1]}'"
        return str(path) if path is not None else "the stored config" if base else ""

    check_values(cfg, where)
    _apply_split(cfg, where)
    return cfg


SHIPPED = "shipped:"  # prefix of split-file values that name a list shipped with the package


def _apply_split(cfg: Config, where) -> None:
    """``data.split=NAME`` stands for ``data.labeled=shipped:NAME/labeled`` and
    ``data.unlabeled=shipped:NAME/unlabeled`` (``data.standard_splits`` reads them); a
    different file given as well would be ambiguous."""
    name = cfg.data.split
    if not name:
        return
    for part in ("labeled", "unlabeled"):
        want, given = f"{SHIPPED}{name}/{part}", getattr(cfg.data, part)
        if given not in (None, want):
            raise ConfigError(
                f"data.{part}={given} and data.split={name} both name the {part} images "
                f"({where(f'data.{part}') or where('data.split') or 'config'}). Give one: "
                f"data.split=null to use your own files, or drop data.{part}"
            )
        setattr(cfg.data, part, want)


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with a relative ``data.root``, and relative split files, ``model.pretrained``
    and ``train.init_from`` files that exist from the working folder, made absolute: a run
    stores them so, and its checkpoints evaluate and resume from any folder. (Moving the data
    later is fine: give the new ``data.root``; see ``data.fingerprint``.)"""

    def absolute(value: str | None, must_exist: bool) -> str | None:
        if not value or value in ("hub", "bundled"):
            return value
        p = Path(value).expanduser()
        if p.is_absolute() or (must_exist and not p.exists()):
            return value
        return os.path.abspath(p)

    data = replace(
        cfg.data,
        root=absolute(cfg.data.root, must_exist=False),
        labeled=absolute(cfg.data.labeled, must_exist=True),
        unlabeled=absolute(cfg.data.unlabeled, must_exist=True),
        val=absolute(cfg.data.val, must_exist=True),
        select=(
            absolute(cfg.data.select, must_exist=True)
            if parse_select(cfg.data.select)[0] == "file"
            else cfg.data.select
        ),
    )
    model = replace(cfg.model, pretrained=absolute(cfg.model.pretrained, must_exist=True))
    train = replace(cfg.train, init_from=absolute(cfg.train.init_from, must_exist=True))
    return replace(cfg, data=data, model=model, train=train)


def without_pretrained(cfg: Config) -> Config:
    """``cfg`` for models whose weights come from a checkpoint or an export:
    ``model.pretrained`` is never read (the file may have moved; ``hub`` would download)."""
    return replace(cfg, model=replace(cfg.model, pretrained=None))


def to_dict(cfg: Config) -> dict:
    """Plain dict of a config (enums as their values), for YAML and checkpoints."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs: ``{dotted.key: (a_value, b_value)}``."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
