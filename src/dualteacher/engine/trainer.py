"""The training loop: plain, iteration-based, method-agnostic.

One step: next labelled (and unlabelled) batch -> ``method.training_step`` -> backward of
``"loss"`` -> optimizer and scheduler step -> ``method.after_step`` (teacher updates). Every
``eval_every`` steps the student and each teacher are validated and ``curves.png`` is redrawn;
every ``ckpt_every`` steps ``latest.pt`` (and a step-numbered copy) is written; ``best.pt``
follows the student's best mIoU. A run directory that already holds a checkpoint resumes from
it. ``train.max_minutes`` stops the loop once the training steps have used that much
wall-clock time. Signals, bad files and non-finite losses: ``engine.guard``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dualteacher.config import Config, EpochUnit, load_config, to_dict, to_yaml
from dualteacher.data import DataBundle, build_data
from dualteacher.data.base import EvalSet
from dualteacher.data.loaders import build_train_loaders
from dualteacher.engine.checkpoint import (
    config_changes,
    find_resume_checkpoint,
    load_checkpoint,
    load_method_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dualteacher.engine.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    reseed_rank,
    resolve_device,
    synchronize,
)
from dualteacher.engine.evaluate import check_eval_config, evaluate
from dualteacher.engine.guard import RunGuard, check_writable
from dualteacher.engine.memory import peak_memory_mb, reset_peak_memory
from dualteacher.engine.optim import build_optimizer, build_scheduler, scaled_optim_config
from dualteacher.engine.step import StepRunner
from dualteacher.errors import CheckpointError, ConfigError
from dualteacher.methods import Method, StepInfo, build_method
from dualteacher.metrics import SegMetrics
from dualteacher.models import SegModel, build_model

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(
    cfg: Config, num_labeled: int, world_size: int = 1, num_unlabeled: int | None = None
) -> int:
    """What an "epoch" is: ``train.epoch_steps`` if set, else one pass over the labelled set
    (``num_labeled // global labelled batch``, at least 1), or over the unlabelled set with
    ``train.epoch_unit=unlabeled``. The global batch counts every process and accumulated
    micro-batch. Dual Teacher switches teachers by it."""
    if cfg.train.epoch_steps:
        return cfg.train.epoch_steps
    if cfg.train.epoch_unit == EpochUnit.unlabeled:
        if not num_unlabeled:
            raise ConfigError(
                "train.epoch_unit=unlabeled, but the unlabelled set is empty: give unlabelled "
                "images (data.unlabeled) or set train.epoch_unit=labeled"
            )
        batch_u = cfg.data.batch_size_u or cfg.data.batch_size
        return max(1, num_unlabeled // (batch_u * world_size * cfg.train.accum_steps))
    return max(1, num_labeled // (cfg.data.batch_size * world_size * cfg.train.accum_steps))


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


@dataclass
class Run:
    """Everything built from a config, shared by training, evaluation and prediction."""

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
    for_training: bool = True,
    bundle: DataBundle | None = None,
) -> Run:
    """Build data, student and method from ``cfg``, or from a checkpoint's stored config (with
    ``overrides``) and load its weights. ``bundle``: data already built from the same
    ``cfg.data`` (``compare`` builds it once for all its runs)."""
    state = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        cfg = load_config(None, overrides, base=state["config"])
    assert cfg is not None
    check_eval_config(cfg.eval)
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if bundle is None:
        bundle = build_data(cfg.data)
    if state is not None:
        _check_compatible(state, cfg, bundle, checkpoint)
    method = _build_method(cfg, bundle.num_classes, device)
    if state is not None:
        load_method_state(method, state, checkpoint)
    return Run(cfg, dist, device, bundle, method, EvalSet(bundle.val, cfg.data), state)


def _build_method(cfg: Config, num_classes: int, device: torch.device) -> Method:
    # Same seed on every rank: identical initial student and teachers everywhere.
    seed_all(cfg.train.seed)

    def make_model() -> SegModel:
        return build_model(cfg.model, num_classes)

    return build_method(cfg, make_model(), make_model).to(device)


@dataclass
class TrainedModels:
    """A checkpoint's student and teachers, ready for inference, built without its data."""

    cfg: Config
    device: torch.device
    method: Method
    classes: list[str]
    palette: list[tuple[int, int, int]]
    step: int

    def models(self, names: str = "student") -> dict[str, torch.nn.Module]:
        """``student``, ``all`` or comma-separated names -> models in eval mode, by name."""
        from dualteacher.errors import ConfigError

        available = self.method.eval_models()
        wanted = list(available) if names == "all" else [n for n in names.split(",") if n]
        unknown = [n for n in wanted if n not in available]
        if unknown or not wanted:
            raise ConfigError(
                f"no model named {', '.join(unknown) or repr(names)} in this checkpoint; "
                f"it has: {', '.join(available)} (or 'all')"
            )
        return {n: available[n].eval() for n in wanted}


def build_model_from_checkpoint(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device | None = None,
) -> TrainedModels:
    """Rebuild the model(s) of a checkpoint from its stored config and load the weights.

    Unlike ``build_run`` this does not build the dataset: predicting on new images needs
    neither the training data nor its root directory. ``overrides`` change the stored config
    (e.g. ``eval.mode=sliding``); ``device`` defaults to ``train.device`` of that config.
    """
    state = load_checkpoint(path)
    cfg = load_config(None, overrides, base=state["config"])
    # The checkpoint holds every weight: do not read encoder weights from model.pretrained.
    if getattr(cfg.model, "pretrained", None) is not None:
        cfg = replace(cfg, model=replace(cfg.model, pretrained=None))
    device = torch.device(device) if device is not None else resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    method = _build_method(cfg, len(state["classes"]), device)
    load_method_state(method, state, path)
    method.eval()
    palette = [tuple(c) for c in state.get("palette") or []]
    return TrainedModels(cfg, device, method, list(state["classes"]), palette, state["step"])


def _check_compatible(state: dict, cfg: Config, bundle: DataBundle | None, path) -> None:
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


def _check_resume_config(state: dict, cfg: Config, path) -> None:
    """A run resumes only with the config it was started with, up to the keys that do not
    change the training (``RESUMABLE_CHANGES``), unless ``train.resume_with_changes``."""
    changes = config_changes(state["config"], to_dict(cfg))
    if not changes:
        return
    listed = "\n  ".join(changes)
    if cfg.train.resume_with_changes:
        print(f"warning: resuming {path} with a changed config:\n  {listed}")
        return
    raise CheckpointError(
        f"{path} was written by a run with another config; resuming it with this one would "
        f"not continue the same training:\n  {listed}\nRun the original config again to "
        "resume, use a new run directory (--out) for the new config, or pass "
        "train.resume_with_changes=true to continue this run with the changes."
    )


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    final: dict[str, SegMetrics]  # last validation, per evaluated model
    best_miou: float  # best student mIoU over the run
    best_step: int
    train_seconds: float  # wall-clock of the training steps (validation excluded)
    history: list[dict] = field(default_factory=list)
    step_seconds: float = float("nan")  # train_seconds / steps
    peak_memory_mb: float = float("nan")  # see engine.memory for what is measured
    memory_kind: str = ""  # cuda_max_allocated | peak_rss | peak_rss_process
    stopped_by_time: bool = False  # train.max_minutes ended the run before train.steps

    @property
    def miou(self) -> float:
        return self.final["student"].miou


class MetricWriter:
    """``metrics.jsonl`` (one JSON object per line) plus TensorBoard scalars; rank 0 only.

    ``keep_until``: the step training resumes from; rows of later steps, logged by a process
    that died before its next checkpoint, are dropped (those steps are trained again)."""

    def __init__(
        self, out_dir: Path, tensorboard: bool, enabled: bool, keep_until: int | None = None
    ):
        self.enabled = enabled
        if enabled and keep_until is not None:
            drop_rows_after(out_dir / "metrics.jsonl", keep_until)
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, row: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Remove the rows of ``metrics.jsonl`` whose step is after ``step``, and a line torn by a
    killed process (atomic rewrite)."""
    if not path.is_file():
        return

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and keep(ln)]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def default_out_dir(cfg: Config) -> str:
    return f"runs/{cfg.data.name}_{cfg.method.name}"


def measure_step_seconds(
    cfg: Config, steps: int = 8, warmup: int = 2, bundle: DataBundle | None = None
) -> float:
    """Mean wall-clock seconds of one training step of ``cfg``, timed over ``steps`` steps after
    ``warmup`` untimed ones; writes nothing. ``compare --minutes`` turns a time budget into a
    step count with it."""
    run = build_run(cfg, bundle=bundle)
    method, device = run.method, run.device
    optimizer = build_optimizer(method.student, scaled_optim_config(cfg, run.dist.world_size)[0])
    scheduler = build_scheduler(optimizer, max(cfg.train.steps, warmup + steps), cfg.optim)
    step_fn = StepRunner(method, optimizer, scheduler, device, cfg.train, run.dist)
    epoch_steps = steps_per_epoch(cfg, len(run.bundle.labeled), run.dist.world_size)
    loader_x, loader_u = build_train_loaders(
        run.bundle,
        cfg.data,
        seed=cfg.train.seed,
        start_step=0,
        need_unlabeled=method.uses_unlabeled,
        need_strong=method.needs_strong_view,
        official_pad=method.official_pad,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
        device=device,
        accum_steps=cfg.train.accum_steps,
    )
    it_x = iter(loader_x)
    it_u = iter(loader_u) if loader_u is not None else None
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        step_fn(it_x, it_u, StepInfo(step, epoch_steps))
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def _write_curves(out_dir: Path, epoch_steps: int) -> None:
    """Redraw ``curves.png`` from ``metrics.jsonl``; a plotting failure never stops training."""
    try:
        from dualteacher.plots import plot_training_curves, read_metrics

        plot_training_curves(
            read_metrics(out_dir / "metrics.jsonl"), out_dir / "curves.png", epoch_steps
        )
    except Exception as e:  # matplotlib problems, a full disk, odd metrics rows
        log.warning("could not write %s: %s: %s", out_dir / "curves.png", type(e).__name__, e)


def train(
    cfg: Config, *, stop_after: int | None = None, bundle: DataBundle | None = None
) -> TrainResult:
    """Train ``cfg`` in ``cfg.train.out_dir``, resuming from its newest checkpoint if present.

    ``stop_after``: leave after this global step with ``latest.pt`` written, as an interrupted
    run would (tests use it; the schedule still spans the whole run, see ``total_steps``).
    ``bundle``: data already built from ``cfg.data``. Signals, bad files and non-finite losses
    are handled by ``engine.guard.RunGuard`` (``TrainingStopped`` / ``DataError``).
    """
    out_dir = Path(cfg.train.out_dir or default_out_dir(cfg))
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; the group joins later
    if is_main:
        check_writable(out_dir)
    with RunGuard(cfg, out_dir, is_main) as guard:
        return _train(cfg, out_dir, guard, stop_after, bundle)


def _train(
    cfg: Config, out_dir: Path, guard: RunGuard, stop_after: int | None, bundle: DataBundle | None
) -> TrainResult:
    resume = find_resume_checkpoint(out_dir)
    if resume is not None:  # before building anything: a wrong run directory fails fast
        _check_compatible(resume[1], cfg, None, resume[0])
        _check_resume_config(resume[1], cfg, resume[0])
    run = build_run(cfg, bundle=bundle)
    method, dist, device = run.method, run.dist, run.device
    student = method.student
    optim_cfg, lr_line = scaled_optim_config(cfg, dist.world_size)
    optimizer = build_optimizer(student, optim_cfg)
    num_unlabeled = len(run.bundle.unlabeled) if run.bundle.unlabeled is not None else 0
    epoch_steps = steps_per_epoch(cfg, len(run.bundle.labeled), dist.world_size, num_unlabeled)
    total = total_steps(cfg, epoch_steps)
    scheduler = build_scheduler(optimizer, total, cfg.optim)
    eval_every = eval_interval(cfg, epoch_steps)

    start, best, history, t_train = 0, {"miou": float("-inf"), "step": 0}, [], 0.0
    if resume is not None:
        path, state = resume
        _check_compatible(state, cfg, run.bundle, path)
        load_method_state(method, state, path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, history = state["step"], state["best"], state["history"]
        t_train = state["train_seconds"]
        set_rng_state(state["rng"])
        guard.load_state_dict(state.get("guard", {}), start)
        reseed_rank(cfg.train.seed, dist, start)
        if dist.is_main:
            print(f"resuming {out_dir} from step {start} ({path.name})")
    else:
        # Per-rank randomness (mixing boxes, dropout) from here on; weights are identical.
        seed_all(cfg.train.seed + 1000 * dist.rank)

    step_fn = StepRunner(method, optimizer, scheduler, device, cfg.train, dist, guard)
    if resume is not None and step_fn.scaler and resume[1].get("grad_scaler"):
        step_fn.scaler.load_state_dict(resume[1]["grad_scaler"])  # fp16 loss scale continues
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        print(lr_line)
    loader_x, loader_u = build_train_loaders(
        run.bundle,
        cfg.data,
        seed=cfg.train.seed,
        start_step=start,
        need_unlabeled=method.uses_unlabeled,
        need_strong=method.needs_strong_view,
        official_pad=method.official_pad,
        num_strong=method.num_strong_views,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
        accum_steps=cfg.train.accum_steps,
    )
    it_x = guard.watch(iter(loader_x))
    it_u = guard.watch(iter(loader_u)) if loader_u is not None else None
    writer = MetricWriter(out_dir, cfg.train.tensorboard, dist.is_main, keep_until=start)
    models = method.eval_models() if cfg.train.eval_teachers else {"student": student}
    final: dict[str, SegMetrics] = {}

    def checkpoint_state(step: int) -> dict:
        return {
            "config": to_dict(cfg),
            "classes": run.bundle.classes,
            "palette": run.bundle.palette,
            "state": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best": best,
            "history": history,
            "train_seconds": t_train,
            "rng": rng_state(),
            "guard": guard.state_dict(),
            "grad_scaler": step_fn.scaler.state_dict() if step_fn.scaler else None,
        }

    guard.bind(checkpoint_state)

    def validate() -> dict[str, SegMetrics]:
        return {
            name: evaluate(
                m,
                run.val_set,
                run.bundle.num_classes,
                cfg.eval,
                device,
                run.bundle.ignore_index,
                dist.rank,
                dist.world_size,
            )
            for name, m in models.items()
        }

    bar = tqdm(
        total=total,
        initial=start,
        disable=not (cfg.train.progress and dist.is_main),
        desc=f"{cfg.method.name}",
        dynamic_ncols=True,
    )
    budget = cfg.train.max_minutes * 60 if cfg.train.max_minutes is not None else None
    # A resumed run whose budget is already spent only validates.
    end = start if budget is not None and t_train >= budget else total
    memory_kind = reset_peak_memory(device)
    step, out_of_time = start, False
    for step in range(start, end):
        t0 = time.perf_counter()
        info = StepInfo(step, epoch_steps)
        out = step_fn(it_x, it_u, info)
        if budget is not None:
            synchronize(device)  # the budget is wall-clock: count queued GPU work in this step
        t_train += time.perf_counter() - t0
        done = step + 1
        guard.end_step(done)
        bar.update(1)
        out_of_time = budget is not None and t_train >= budget and done < total
        last = done == total or out_of_time

        if done % cfg.train.log_every == 0 or last:
            row = {"step": done, "epoch": info.epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: float(v.detach() if torch.is_tensor(v) else v) for k, v in out.items()})
            row.update(guard.counters(), time=t_train)
            writer.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")

        if done % eval_every == 0 or last:
            final = validate()
            row = {"step": done, "time": t_train}
            row.update({f"miou_{n}": r.miou for n, r in final.items()})
            history.append({**row, "iou": {n: r.iou for n, r in final.items()}})
            writer.write(row, prefix="val")
            improved = final["student"].miou > best["miou"]
            if improved:
                best = {"miou": final["student"].miou, "step": done}
            if dist.is_main:
                parts = "  ".join(f"{n} {r.miou:5.2f}" for n, r in final.items())
                bar.write(f"step {done:>6}  val mIoU  {parts}  (best {best['miou']:.2f})")
                if improved:
                    save_checkpoint(checkpoint_state(done), out_dir / "best.pt")
                if cfg.train.curves:
                    _write_curves(out_dir, epoch_steps)

        stopping = stop_after is not None and done >= stop_after
        signalled = guard.stop_requested() and not last
        if done % cfg.train.ckpt_every == 0 or last or stopping or signalled:
            guard.save(done, periodic=not (last or stopping or signalled))
        if signalled:
            raise guard.interrupted()
        if stopping or out_of_time:
            break
    bar.close()
    writer.close()
    done = min(step + 1, total) if end > start else start
    if not final:  # nothing validated in this process (resumed a finished run, or stopped)
        final = validate()
    if out_of_time and dist.is_main:
        print(f"time budget train.max_minutes={cfg.train.max_minutes} used up at step {done}")
    result = TrainResult(
        out_dir=str(out_dir),
        steps=done,
        final=final,
        best_miou=best["miou"],
        best_step=best["step"],
        train_seconds=t_train,
        history=history,
        step_seconds=t_train / done if done else float("nan"),
        peak_memory_mb=peak_memory_mb(device, memory_kind),
        memory_kind=memory_kind,
        stopped_by_time=out_of_time or (budget is not None and end == start and done < total),
    )
    if dist.is_main and final:
        print(
            f"done: {done} steps in {t_train:.0f} s; student mIoU final {result.miou:.2f}, "
            f"best {result.best_miou:.2f} (step {result.best_step}); run dir {out_dir}"
        )
    barrier()  # under DDP: no rank leaves before rank 0 has written its files
    return result
