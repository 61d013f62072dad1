"""Building runs from a config: the one place where data, models, optimizer, schedule, loaders
and the step runner are put together.

- ``build_training``: a training run (``train``, ``compare``'s timing probe, ``bench``): this
  process's device and process group, the resume decision (rank 0 chooses, every rank loads the
  same file), data, student and teachers, optimizer with the scaled lr, scheduler over the run's
  length, the saved ``TrainState``, the prepared method (``prepare_method``: channels-last,
  DDP, compile) and its ``StepRunner``; ``TrainingRun.batches()`` gives the loaders with every
  stream the method needs.
- ``build_run``: data and method for evaluation (from a config or a checkpoint).

A checkpoint's models without any data (prediction) are ``serving.trained``'s.

A checkpoint holds every weight, so models rebuilt from one (evaluation, prediction, a
resumed run) never read ``model.pretrained``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dualteacher.checkpoint import (
    config_changes,
    find_resume_checkpoint,
    load_checkpoint,
    load_method_state,
)
from dualteacher.config import (
    ClassWeights,
    Config,
    DataConfig,
    EpochUnit,
    StrongColour,
    load_config,
    to_dict,
    without_pretrained,
)
from dualteacher.data import DataBundle, build_data, run_index
from dualteacher.data.base import EvalSet
from dualteacher.data.check import labelled_stats
from dualteacher.data.fingerprint import data_changes, data_fingerprint
from dualteacher.data.loaders import build_train_loaders
from dualteacher.data.transforms import COLOUR_CUE, colour_is_cue, strong_for_colour
from dualteacher.device import check_amp, select_device
from dualteacher.engine import init_from
from dualteacher.engine.distributed import (
    DistInfo,
    broadcast_object,
    gather_objects,
    grad_scaler,
    init_distributed,
    prepare_method,
    reseed_rank,
)
from dualteacher.engine.optim import build_optimizer, build_scheduler, scaled_optim_config
from dualteacher.engine.state import TrainState
from dualteacher.engine.step import StepRunner
from dualteacher.errors import CheckpointError, ConfigError, DataError
from dualteacher.methods import Method, build_seeded_method, seed_all, unread_settings
from dualteacher.methods.dual_teacher import PASTE_MIN_LABELLED, resolve_paste
from dualteacher.methods.losses import class_shares, class_weights
from dualteacher.models.windows import check_eval_config


def steps_per_epoch(
    cfg: Config, num_labeled: int, world_size: int = 1, num_unlabeled: int | None = None
) -> int:
    """What an "epoch" is: ``train.epoch_steps`` if set, else one pass over the labelled set
    (``num_labeled // global labelled batch``, at least 1), or over the unlabelled set with
    ``train.epoch_unit=unlabeled``. The global batch counts every process and accumulated
    micro-batch. Dual Teacher switches teachers by it."""
    if cfg.train.epoch_steps:
        return cfg.train.epoch_steps
    batch_x, batch_u = global_batches(cfg, world_size)
    if cfg.train.epoch_unit == EpochUnit.unlabeled:
        if not num_unlabeled:
            raise ConfigError(
                "train.epoch_unit=unlabeled, but the unlabelled set is empty: give unlabelled "
                "images (data.unlabeled) or set train.epoch_unit=labeled"
            )
        return max(1, num_unlabeled // batch_u)
    return max(1, num_labeled // batch_x)


def global_batches(cfg: Config, world_size: int = 1) -> tuple[int, int]:
    """``(labelled, unlabelled)`` images per optimizer step, over every process and
    accumulated micro-batch (``data.batch_size_u`` null: the labelled batch size)."""
    per_step = world_size * cfg.train.accum_steps
    return cfg.data.batch_size * per_step, (cfg.data.batch_size_u or cfg.data.batch_size) * per_step


def total_steps(cfg: Config, epoch_steps: int) -> int:
    """Length of the run: ``train.epochs * epoch_steps`` when ``train.epochs`` is set, else
    ``train.steps``. The learning-rate schedule spans it."""
    return cfg.train.epochs * epoch_steps if cfg.train.epochs else cfg.train.steps


def eval_interval(cfg: Config, epoch_steps: int) -> int:
    """Steps between validations: ``train.eval_every_epochs * epoch_steps`` when that is set,
    else ``train.eval_every``."""
    every = cfg.train.eval_every_epochs
    if every is None:
        return cfg.train.eval_every
    if every < 1:
        raise ConfigError(
            f"train.eval_every_epochs={every} must be a positive number of epochs "
            "(or null: validate every train.eval_every steps)"
        )
    return every * epoch_steps


def run_length(cfg: Config, bundle: DataBundle | None, world_size: int = 1) -> tuple[int, int]:
    """``(steps per epoch, total steps)`` of ``cfg`` on ``bundle``; without data (``bench``'s
    random batches) an epoch is ``train.epoch_steps`` or 1 step."""
    if bundle is None:
        epoch = cfg.train.epoch_steps or 1
    else:
        unlabeled = len(bundle.unlabeled) if bundle.unlabeled is not None else 0
        epoch = steps_per_epoch(cfg, len(bundle.labeled), world_size, unlabeled)
    return epoch, total_steps(cfg, epoch)


def length_line(
    cfg: Config, bundle: DataBundle | None, total: int, world_size: int, uses_unlabeled: bool
) -> str | None:
    """The run's length in passes over its data, so that a length can be compared between
    datasets of different sizes (docs/gain.md: on the gain suite Dual Teacher's gain grew from
    600 to 1200 steps, 2.4 to 4.8 passes over 1000 unlabelled images); None without data."""
    if bundle is None:
        return None
    batch_x, batch_u = global_batches(cfg, world_size)
    sets = [(len(bundle.labeled), batch_x, "labelled")]
    if uses_unlabeled and bundle.unlabeled is not None and len(bundle.unlabeled):
        sets.insert(0, (len(bundle.unlabeled), batch_u, "unlabelled images"))
    parts = [
        f"{total * b / n:.1f} passes over the {n} {what} ({b} per step)" for n, b, what in sets
    ]
    return f"run length: {total} steps: " + ", ".join(parts)


def _setup_process(cfg: Config, training: bool) -> tuple[torch.device, DistInfo]:
    """This process's device (for training, ``train.amp`` checked against it) and process
    group, before anything else is built."""
    check_eval_config(cfg.eval)
    device = select_device(cfg.train.device)
    if training:  # evaluation runs in float32: a bf16 run evaluates on any GPU
        check_amp(cfg.train.amp, device)
    dist = init_distributed(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return device, dist


def _with_paste_resolved(cfg: Config, bundle: DataBundle | None, verbose: bool) -> Config:
    """``cfg`` with ``method.dual_teacher.paste_labelled: null`` made true or false from the
    labelled set's size (``resolve_paste``); without data (``bench``), or as set, unchanged."""
    dt = cfg.method.dual_teacher
    if cfg.method.name != "dual_teacher" or dt.paste_labelled is not None or bundle is None:
        return cfg
    n = len(bundle.labeled)
    resolved = resolve_paste(dt, n)
    if verbose:
        print(
            f"labelled objects pasted into the mixed images (paste_labelled: null): "
            f"{'on' if resolved.paste_labelled else 'off'}, {n} labelled images "
            f"(on from {PASTE_MIN_LABELLED})"
        )
    return replace(cfg, method=replace(cfg.method, dual_teacher=resolved))


def _build_method(
    cfg: Config, num_classes: int, device: torch.device, verbose: bool = True
) -> Method:
    # Same seed on every rank: identical initial student and teachers everywhere.
    return build_seeded_method(cfg, num_classes, device, verbose)


# ------------------------------------------------------------------------------- evaluation
@dataclass
class Run:
    """Data and models built from a config, for evaluation."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    bundle: DataBundle
    method: Method
    val_set: EvalSet
    checkpoint: dict | None = None


def build_run(
    cfg: Config | None = None,
    *,
    checkpoint: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    bundle: DataBundle | None = None,
) -> Run:
    """Build data, student and method from ``cfg``, or from a checkpoint's stored config (with
    ``overrides``) and load its weights. ``bundle``: data already built from the same
    ``cfg.data``."""
    state = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        # data.rescan (--rescan) was asked for by the command that trained, not by this one
        base = {**state["config"], "data": {**state["config"].get("data", {}), "rescan": False}}
        cfg = without_pretrained(load_config(None, overrides, base=base))
    assert cfg is not None
    device, dist = _setup_process(cfg, training=False)
    if bundle is None:  # a checkpoint's run directory may hold its scan index: read it
        index = run_index(Path(checkpoint).parent) if checkpoint is not None else None
        try:
            bundle = build_data(cfg.data, index=index, update_index=False)
        except DataError as e:
            if checkpoint is None:
                raise
            raise DataError(f"{e}\n{_stored_data_hint(cfg, checkpoint)}") from None
    if state is not None:
        check_compatible(state, cfg, bundle, checkpoint)
    method = _build_method(cfg, bundle.num_classes, device)
    if state is not None:
        load_method_state(method, state, checkpoint)
    return Run(cfg, dist, device, bundle, method, EvalSet(bundle.val, cfg.data), state)


def _stored_data_hint(cfg: Config, checkpoint) -> str:
    """Where the data settings of a checkpoint's run come from, and how to point elsewhere."""
    root = cfg.data.root
    relative = root is not None and not Path(root).expanduser().is_absolute()
    where = f" (data.root={root} is relative: resolved from this folder, {Path.cwd()})"
    return (
        f"The data settings come from the config stored in {checkpoint}"
        + (where if relative else "")
        + "; if the dataset is elsewhere, give its place after the checkpoint: dualteacher "
        f"eval {checkpoint} data.root=PATH"
    )


def check_compatible(state: dict, cfg: Config, bundle: DataBundle | None, path) -> None:
    """Same model, method and (with ``bundle``) number of classes as the checkpoint."""
    stored = state["config"]
    problems = []
    if stored["model"]["name"] != cfg.model.name:
        problems.append(f"model {stored['model']['name']!r} (config says {cfg.model.name!r})")
    if stored["method"]["name"] != cfg.method.name:
        problems.append(f"method {stored['method']['name']!r} (config says {cfg.method.name!r})")
    if bundle is not None and len(state["classes"]) != bundle.num_classes:
        problems.append(
            f"{len(state['classes'])} classes (dataset {cfg.data.name!r} has {bundle.num_classes})"
        )
    if problems:
        raise CheckpointError(
            f"{path} was trained with {'; '.join(problems)}. Use a run directory (--out) of its "
            "own for this config, or a checkpoint of the same model, method and classes."
        )


def check_resume_config(state: dict, cfg: Config, path, changes: list[str] | None = None) -> None:
    """A run resumes only with the config it was started with, up to the keys that do not
    change the training (``RESUMABLE_CHANGES``) or that its method never reads (a supervised
    run's strong view: ``unread_settings``), and on the same data (``changes``: the
    ``data_changes`` of its fingerprint), unless ``train.resume_with_changes``."""
    if changes is None:
        changes = config_changes(state["config"], to_dict(cfg), unread_settings(cfg.method.name))
    if not changes:
        return
    listed = "\n  ".join(changes)
    if cfg.train.resume_with_changes:
        print(f"warning: resuming {path} with a changed config or data:\n  {listed}")
        return
    raise CheckpointError(
        f"{path} was written by a run with another config or other data; resuming it with "
        f"this one would not continue the same training:\n  {listed}\nRun the original "
        "config (and data) again to resume, use a new run directory (--out) for the new "
        "config, or pass train.resume_with_changes=true to continue this run with the changes."
    )


# ------------------------------------------------------------------------------------ resume
def agree_on_checkpoint(out_dir: Path, dist: DistInfo) -> tuple[Path, dict] | None:
    """The checkpoint every rank resumes from: rank 0 picks the newest readable one in its run
    directory and every rank loads the file of that name (and step) from its own ``out_dir``
    (the same path on a shared file system). A rank that cannot is a ``CheckpointError`` on
    every rank, naming the rank, its host and directory: no rank trains alone. ``None``: no
    checkpoint, a fresh start everywhere."""
    choice: dict | None = None
    found = None
    if dist.is_main:
        try:
            found = find_resume_checkpoint(out_dir, repair=True)  # latest.pt mended
        except CheckpointError as e:
            choice = {"error": str(e)}
        else:
            if found is not None:
                choice = {"name": found[0].name, "step": found[1]["step"]}
    choice = broadcast_object(choice)
    if choice is None:
        return None
    if "error" in choice:
        raise CheckpointError(choice["error"])
    problem = None
    if not dist.is_main:
        path = out_dir / choice["name"]
        try:
            found = (path, load_checkpoint(path))
        except CheckpointError as e:
            problem = "no such file" if not path.is_file() else str(e).split(". ")[0]
        else:
            if found[1]["step"] != choice["step"]:
                problem = f"it holds step {found[1]['step']}, another run's checkpoint"
    where = {"rank": dist.rank, "host": socket.gethostname(), "dir": str(out_dir.resolve())}
    reports = gather_objects({**where, "problem": problem})
    bad = [r for r in reports if r["problem"]]
    if bad:
        listed = "; ".join(
            f"rank {r['rank']} on host {r['host']} cannot load {Path(r['dir']) / choice['name']} "
            f"({r['problem']})"
            for r in bad
        )
        raise CheckpointError(
            f"rank 0 resumes from {reports[0]['dir']}/{choice['name']} (step {choice['step']}) "
            f"on host {reports[0]['host']}, but {listed}. Every process must see the same run "
            "directory: put --out (train.out_dir) on a file system all nodes share (NFS, "
            "Lustre, ...), with the same path on every node."
        )
    assert found is not None
    return found


# ---------------------------------------------------------------------------------- training
@dataclass
class TrainingRun:
    """A training run ready to step: see ``build_training``."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: StepRunner
    state: TrainState
    epoch_steps: int
    total_steps: int
    lr_line: str  # the effective learning rate and why (optim.scale_lr)
    bundle: DataBundle | None  # None: no dataset (``bench`` feeds random batches)
    resumed_from: Path | None = None
    # cfg.data as the training loaders use it: data.strong.colour=auto resolved from the
    # labelled set (recomputed on resume from the same, fingerprinted data); None: cfg.data
    train_data: DataConfig | None = None

    @property
    def length_line(self) -> str | None:
        """The run's length in passes over its data (``length_line``)."""
        return length_line(
            self.cfg,
            self.bundle,
            self.total_steps,
            self.dist.world_size,
            self.method.uses_unlabeled,
        )

    @property
    def val_set(self) -> EvalSet:
        assert self.bundle is not None
        return EvalSet(self.bundle.val, self.cfg.data)

    @property
    def select_set(self) -> EvalSet | None:
        """The selection split that picks ``best.pt`` (``data.select``); None when off."""
        if self.bundle is None or self.bundle.select is None:
            return None
        return EvalSet(self.bundle.select, self.cfg.data)

    def batches(self) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
        """The endless labelled and (if the method trains on them) unlabelled loaders,
        positioned at ``state.step``, each batch with every view the method needs."""
        assert self.bundle is not None, "a run without a dataset has no loaders"
        cfg, method = self.cfg, self.method
        return build_train_loaders(
            self.bundle,
            self.train_data or cfg.data,
            seed=cfg.train.seed,
            start_step=self.state.step,
            need_unlabeled=method.uses_unlabeled,
            need_strong=method.needs_strong_view,
            num_strong=method.num_strong_views,
            official_pad=method.official_pad,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
            accum_steps=cfg.train.accum_steps,
        )


def build_training(
    cfg: Config,
    *,
    bundle: DataBundle | None = None,
    num_classes: int | None = None,
    resume_dir: Path | None = None,
    verbose: bool = True,
) -> TrainingRun:
    """Build a training run of ``cfg``.

    Args:
        bundle: data already built from ``cfg.data`` (``compare`` builds it once).
        num_classes: build no dataset at all, for ``num_classes`` classes (``bench``).
        resume_dir: resume from the checkpoint of this run directory, if there is one (see
            ``agree_on_checkpoint``); the config must be the one it was written with. Its
            ``data_index.npz`` caches the folder scans (``data.index`` names another file).
            Without a checkpoint there, ``train.init_from`` starts the run from another
            run's weights with a fresh schedule (``engine.init_from``).
        verbose: print what ``model.pretrained`` loaded.
    """
    device, dist = _setup_process(cfg, training=True)
    resume = agree_on_checkpoint(resume_dir, dist) if resume_dir is not None else None
    source = None  # train.init_from of a new run: (checkpoint, record)
    if resume is not None:  # before building anything: a wrong run directory fails fast
        cfg = init_from.adopt_recorded_source(resume[1], cfg, resume[0])
        check_compatible(resume[1], cfg, None, resume[0])
        check_resume_config(resume[1], cfg, resume[0])
    elif cfg.train.init_from:  # read and checked before the data: a wrong file fails fast
        source = init_from.read_source(cfg)
    if num_classes is None:
        if bundle is None:  # folder scans cached in the run directory, for a resumed run
            index = run_index(resume_dir) if resume_dir is not None else None
            bundle = build_data(cfg.data, index=index)
        num_classes = bundle.num_classes
        classes, palette = bundle.classes, bundle.palette
    else:
        bundle, classes, palette = None, [f"class_{i}" for i in range(num_classes)], []
    if source is not None:
        init_from.check_classes(source[1], classes, cfg.data.name)
    fingerprint = data_fingerprint(bundle) if bundle is not None else None
    if resume is not None:
        check_compatible(resume[1], cfg, bundle, resume[0])
        if fingerprint is not None:  # the same data, wherever it lies now (not data.root)
            changes = data_changes(resume[1].get("data"), fingerprint)
            check_resume_config(resume[1], cfg, resume[0], changes)
    loaded = resume is not None or source is not None  # model.pretrained is never read then
    # the method's settings with paste_labelled: null resolved from the labelled set's size;
    # the run's config keeps null (a resumed run resolves it again from the same data)
    method_cfg = _with_paste_resolved(cfg, bundle, verbose and dist.is_main)
    method = _build_method(
        without_pretrained(method_cfg) if loaded else method_cfg, num_classes, device, verbose
    )
    record = init_from.load_source(method, cfg, *source) if source is not None else None
    weighted = cfg.method.class_weights != ClassWeights.none
    auto = cfg.data.strong.colour == StrongColour.auto and method.needs_strong_view
    # One read of the labelled set serves the class weights, the strong view and the crop
    # warning. Every rank reads the same labelled set, so they agree without a broadcast.
    stats = (
        labelled_stats(bundle.labeled, num_classes)
        if bundle is not None and (weighted or auto or method.needs_class_prior)
        else None
    )
    if verbose and dist.is_main and stats is not None:
        warning = stats.crop_warning(cfg.data.crop_size, classes)
        if warning:
            print(f"warning: {warning}")
    if weighted and stats is not None:
        weights = class_weights(stats.pixels, cfg.method.class_weights)
        method.set_class_weights(weights)
        if verbose and dist.is_main and weights is not None:
            shown = ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights.tolist()))
            print(f"class weights ({cfg.method.class_weights}, from the labelled masks): {shown}")
    if method.needs_class_prior and stats is not None:
        method.set_class_prior(torch.as_tensor(class_shares(stats.pixels)))
        if verbose and dist.is_main:
            shown = ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, method.class_prior.tolist()))
            print(f"labelled class shares (alignment / balance prior): {shown}")
    train_data = cfg.data  # what the training loaders build, with data.strong.colour resolved
    if auto and stats is not None:
        score = stats.colour_separability()
        strong = strong_for_colour(cfg.data.strong, score)
        train_data = replace(cfg.data, strong=strong)
        if verbose and dist.is_main:
            cue = "a class cue: kept" if colour_is_cue(score) else "not a class cue: varied"
            print(
                f"strong view (data.strong.colour=auto): colour separates the labelled "
                f"classes at {score:.2f} (cue from {COLOUR_CUE}), {cue} (hue {strong.hue}, "
                f"grayscale_p {strong.grayscale_p})"
            )
    optim_cfg, lr_line = scaled_optim_config(cfg, dist.world_size)
    optimizer = build_optimizer(method.student, optim_cfg)
    epoch_steps, total = run_length(cfg, bundle, dist.world_size)
    scheduler = build_scheduler(optimizer, total, cfg.optim)
    scaler = grad_scaler(device, cfg.train.amp)
    state = TrainState(cfg, classes, palette, method, optimizer, scheduler, scaler, device)
    state.data = fingerprint
    state.init_from = record  # a resumed run restores its own record from the checkpoint
    if resume is not None:
        state.load_state_dict(resume[1], resume[0])
        reseed_rank(cfg.train.seed, dist, state.step)
    else:
        # Per-rank randomness (mixing boxes, dropout) from here on; weights are identical.
        seed_all(cfg.train.seed + 1000 * dist.rank)
    ddp = prepare_method(method, cfg.train, dist, device)
    step = StepRunner(
        method,
        optimizer,
        scheduler,
        cfg.train,
        device,
        ddp=ddp,
        scaler=scaler,
        dist=dist,
        skip_nonfinite=True,
    )
    return TrainingRun(
        cfg=cfg,
        dist=dist,
        device=device,
        method=method,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        state=state,
        epoch_steps=epoch_steps,
        total_steps=total,
        lr_line=lr_line,
        bundle=bundle,
        resumed_from=resume[0] if resume is not None else None,
        train_data=train_data,
    )


__all__ = [
    "Run",
    "TrainingRun",
    "agree_on_checkpoint",
    "build_run",
    "build_training",
    "eval_interval",
    "global_batches",
    "length_line",
    "run_length",
    "seed_all",
    "steps_per_epoch",
    "total_steps",
]
