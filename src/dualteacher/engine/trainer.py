"""The training loop: plain, iteration-based, method-agnostic.

``train(cfg)`` builds the run (``engine.run.build_training``: data, models, optimizer,
schedule, loaders, step runner; resuming from the run directory's newest checkpoint), then
loops: one optimizer step (``engine.step.StepRunner``: next labelled and unlabelled batch ->
``method.training_step`` -> backward of ``"loss"`` -> optimizer and scheduler step ->
``method.after_step``, the teacher updates), a metrics row every ``log_every`` steps, a
validation of the student and each teacher every ``eval_every`` (``best.pt`` follows the
student's best mIoU on the selection split of ``data.select``, or on the validation set
itself when that is off; ``on_validation`` is called, with which ``study.train`` redraws
``curves.png``), ``latest.pt`` (and a step-numbered copy)
every ``ckpt_every``. ``train.max_minutes`` stops the loop once the training steps have used
that much wall-clock time. Signals, checkpoints, bad files and non-finite losses:
``engine.guard``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dualteacher.checkpoint import save_checkpoint
from dualteacher.config import Config, check_values, to_yaml, with_absolute_paths
from dualteacher.data import DataBundle
from dualteacher.device import backend_settings
from dualteacher.engine.distributed import barrier, synchronize
from dualteacher.engine.evaluate import evaluate
from dualteacher.engine.guard import (
    BadSampleLog,
    Checkpointer,
    GoodStates,
    NonFiniteSteps,
    StopSignals,
    check_writable,
    remove_empty,
    save_after_fault,
)
from dualteacher.engine.init_from import describe as init_source_line
from dualteacher.engine.memory import peak_memory_mb, reset_peak_memory
from dualteacher.engine.run import (
    Run,
    TrainingRun,
    build_run,
    build_training,
    eval_interval,
    seed_all,
    steps_per_epoch,
    total_steps,
)
from dualteacher.errors import WriteError
from dualteacher.methods import StepInfo
from dualteacher.metrics import SegMetrics
from dualteacher.outputs import check_inside_out, default_fix, describe_os_error, write_text

# Built in engine.run; importable from here too.
__all__ = [
    "MetricWriter",
    "Run",
    "TrainResult",
    "build_run",
    "default_out_dir",
    "eval_interval",
    "measure_step_seconds",
    "seed_all",
    "steps_per_epoch",
    "total_steps",
    "train",
]


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    final: dict[str, SegMetrics]  # last validation, per evaluated model
    # Validation mIoU of the student of best.pt, at ``best_step``: the step of the best
    # selection-split mIoU (``best_chosen_on == "select"``, data.select), or of the best
    # validation mIoU itself (``"val"``: optimistic, the reported set chose it).
    best_miou: float
    best_step: int
    train_seconds: float  # wall-clock of the training steps (validation excluded)
    history: list[dict] = field(default_factory=list)
    step_seconds: float = float("nan")  # train_seconds / steps
    peak_memory_mb: float = float("nan")  # see engine.memory for what is measured
    memory_kind: str = ""  # cuda_max_allocated | peak_rss | peak_rss_process
    stopped_by_time: bool = False  # train.max_minutes ended the run before train.steps
    best_chosen_on: str = "val"  # "select" (data.select) or "val": what picked best.pt
    best_select_miou: float | None = None  # selection-split mIoU of best.pt (data.select)

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
        if enabled:  # appended to in place, and tb/ written by TensorBoard: no link out
            check_inside_out(out_dir / "metrics.jsonl")
            check_inside_out(out_dir / "tb" / "events")
        if enabled and keep_until is not None:
            drop_rows_after(out_dir / "metrics.jsonl", keep_until)
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard:
            # optional and slow: only with train.tensorboard
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events of steps it trains again, as metrics.jsonl does
            purge = keep_until + 1 if keep_until else None
            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge)

    def write(self, row: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as e:  # a torn last line is dropped on resume (drop_rows_after)
            raise WriteError(
                f"could not write {self.file.name}: {describe_os_error(e)}. "
                f"{default_fix(Path(self.file.name))}."
            ) from e
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
        check_inside_out(tmp)
        tmp.write_text("".join(kept))
        tmp.replace(path)


def default_out_dir(cfg: Config) -> str:
    """``runs/<data>_<method>``: <data> is the name of the ``data.root`` folder (prefixed with
    ``data.name`` when it does not contain it, e.g. ``voc_data``), or ``data.name``."""
    data = cfg.data.name
    if cfg.data.root:
        folder = Path(os.path.abspath(Path(cfg.data.root).expanduser())).name
        folder = re.sub(r"[^\w.-]+", "_", folder).strip("._")
        if folder:
            keep = cfg.data.name == "folder" or cfg.data.name.lower() in folder.lower()
            data = folder if keep else f"{cfg.data.name}_{folder}"
    return f"runs/{data}_{cfg.method.name}"


def measure_step_seconds(
    cfg: Config, steps: int = 8, warmup: int = 2, bundle: DataBundle | None = None
) -> float:
    """Mean wall-clock seconds of one training step of ``cfg``, timed over ``steps`` steps after
    ``warmup`` untimed ones, as ``train`` would run them (the same ``build_training``); writes
    nothing. ``compare --minutes`` turns a time budget into a step count with it."""
    with backend_settings(cfg.train):
        run = build_training(cfg, bundle=bundle, verbose=False)
        loader_x, loader_u = run.batches()
        it_x, it_u = iter(loader_x), iter(loader_u) if loader_u is not None else None
        t0 = 0.0
        for step in range(warmup + steps):
            if step == warmup:
                synchronize(run.device)
                t0 = time.perf_counter()
            run.step(it_x, it_u, StepInfo(step, run.epoch_steps))
        synchronize(run.device)
    return (time.perf_counter() - t0) / steps


def train(
    cfg: Config,
    *,
    stop_after: int | None = None,
    bundle: DataBundle | None = None,
    on_validation: Callable[[Path, int], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` in ``cfg.train.out_dir``, resuming from its newest checkpoint if present.

    ``stop_after``: leave after this global step with ``latest.pt`` written, as an interrupted
    run would (tests use it; the schedule still spans the whole run, see ``total_steps``).
    ``bundle``: data already built from ``cfg.data``. ``on_validation(out_dir, epoch_steps)``
    is called on the main process after each validation has been logged to ``metrics.jsonl``
    (the loop draws nothing itself: ``study.train`` passes the curves). A signal stops the run with
    ``TrainingStopped``, a bad file with ``DataError`` (both after a checkpoint).
    """
    check_values(cfg)  # a Config built in Python (compare, tests) is checked as a loaded one
    cfg = with_absolute_paths(cfg)  # stored so: eval / resume work from any folder
    out_dir = Path(cfg.train.out_dir or default_out_dir(cfg))
    created: list[Path] = []
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun's rank; the group joins later
        created = check_writable(out_dir)
    with StopSignals() as signals, backend_settings(cfg.train):
        try:
            run = build_training(cfg, bundle=bundle, resume_dir=out_dir)
        except BaseException:  # bad data, config or checkpoint: nothing of the run was written
            remove_empty(created)
            raise
        checkpoints = Checkpointer(
            out_dir,
            cfg.train.keep_last,
            run.dist.is_main,
            run.device,
            saved_step=run.state.step if run.resumed_from else None,
            good=GoodStates(run.state),
        )
        samples = BadSampleLog(run.state, run.dist.is_main)
        try:
            return _loop(run, out_dir, stop_after, signals, checkpoints, samples, on_validation)
        except BaseException as e:
            instead = save_after_fault(e, run.state, checkpoints, samples, signals, run.step.rewind)
            if instead is None:
                raise
            raise instead from None


def _loop(
    run: TrainingRun,
    out_dir: Path,
    stop_after: int | None,
    signals: StopSignals,
    checkpoints: Checkpointer,
    samples: BadSampleLog,
    on_validation: Callable[[Path, int], None] | None = None,
) -> TrainResult:
    cfg, state, dist, device, total = run.cfg, run.state, run.dist, run.device, run.total_steps
    start = state.step
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.yaml", to_yaml(cfg))
        print(run.lr_line)
        if run.length_line is not None:
            print(run.length_line)
        if run.resumed_from is None and state.init_from is not None:
            print(init_source_line(state.init_from))
        if run.resumed_from is not None:
            ranks = f"; every one of the {dist.world_size} ranks loaded it" if dist.enabled else ""
            print(f"resuming {out_dir} from step {state.step} ({run.resumed_from.name}){ranks}")
    loader_x, loader_u = run.batches()
    it_x, it_u = samples.watch(loader_x), samples.watch(loader_u)
    nonfinite = NonFiniteSteps(state, cfg.train.max_bad_steps, dist.is_main)
    writer = MetricWriter(out_dir, cfg.train.tensorboard, dist.is_main, keep_until=state.step)
    method = run.method
    models = method.eval_models() if cfg.train.eval_teachers else {"student": method.student}
    val_set, select_set = run.val_set, run.select_set
    bar = tqdm(
        total=total,
        initial=start,
        disable=not (cfg.train.progress and dist.is_main),
        desc=f"{cfg.method.name}",
        dynamic_ncols=True,
    )
    budget = cfg.train.max_minutes * 60 if cfg.train.max_minutes is not None else None
    # A resumed run whose budget is already spent only validates.
    end = start if budget is not None and state.train_seconds >= budget else total
    eval_every = eval_interval(cfg, run.epoch_steps)
    memory_kind = reset_peak_memory(device)
    final: dict[str, SegMetrics] = {}
    out_of_time = False
    while state.step < end:
        info = StepInfo(state.step, run.epoch_steps)
        t0 = time.perf_counter()
        # No synchronisation here: the step waits for its own forward and backward (the
        # non-finite check); its optimizer and EMA kernels are counted in the next step.
        out = run.step(it_x, it_u, info, stop=signals.requested)
        state.train_seconds += time.perf_counter() - t0
        state.step = done = info.step + 1
        nonfinite.record(run.step.skipped, out["loss"], info.step, checkpoints)
        checkpoints.good.record(out["loss"], run.step.skipped)
        bar.update(1)
        out_of_time = budget is not None and state.train_seconds >= budget and done < total
        last = done == total or out_of_time

        if done % cfg.train.log_every == 0 or last:
            row = {"step": done, "epoch": info.epoch, "lr": run.optimizer.param_groups[0]["lr"]}
            row.update(_scalars(out), **method.diagnostics())
            row.update(state.counters(), time=state.train_seconds)
            writer.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")

        if done % eval_every == 0 or last:
            final = _validate(run, models, val_set)
            # the student only: it is what best.pt keeps (teachers are scored on val)
            select = _validate(run, {"student": method.student}, select_set) if select_set else {}
            _record_validation(run, final, select, writer, bar, out_dir, checkpoints)
            if on_validation is not None and dist.is_main:
                on_validation(out_dir, run.epoch_steps)

        stopping = stop_after is not None and done >= stop_after
        signalled = run.step.stop_requested and not last
        if done % cfg.train.ckpt_every == 0 or last or stopping or signalled:
            periodic = not (last or stopping or signalled)
            if not (periodic and nonfinite.in_a_row):  # latest.pt stays a good one
                checkpoints.save(state)
        if signalled:
            raise signals.stopped(done, checkpoints)
        if stopping or out_of_time:
            break
    bar.close()
    writer.close()
    if not final:  # nothing validated in this process (resumed a finished run, or stopped)
        final = _validate(run, models, val_set)
    done = state.step
    if out_of_time and dist.is_main:
        print(f"time budget train.max_minutes={cfg.train.max_minutes} used up at step {done}")
    result = TrainResult(
        out_dir=str(out_dir),
        steps=done,
        final=final,
        best_miou=state.best["miou"],
        best_step=state.best["step"],
        best_chosen_on="select" if select_set is not None else "val",
        best_select_miou=state.best.get("select_miou"),
        train_seconds=state.train_seconds,
        history=state.history,
        step_seconds=state.train_seconds / done if done else float("nan"),
        peak_memory_mb=peak_memory_mb(device, memory_kind),
        memory_kind=memory_kind,
        stopped_by_time=out_of_time or (budget is not None and end == start and done < total),
    )
    if dist.is_main and final:
        chosen = (
            f"chosen on the selection split, select mIoU {result.best_select_miou:.2f}"
            if select_set is not None
            else "chosen on val"
        )
        print(
            f"done: {done} steps in {state.train_seconds:.0f} s; student val mIoU final "
            f"{result.miou:.2f}, best {result.best_miou:.2f} (step {result.best_step}, "
            f"{chosen}); run dir {out_dir}"
        )
    barrier()  # under DDP: no rank leaves before rank 0 has written its files
    return result


def _scalars(out: dict) -> dict[str, float]:
    """The loss dict's values as floats, with one host synchronisation for all tensors."""
    keys = [k for k, v in out.items() if torch.is_tensor(v)]
    values = []
    if keys:
        values = torch.stack([out[k].detach().float().reshape(()) for k in keys]).tolist()
    row = {k: float(v) for k, v in out.items() if not torch.is_tensor(v)}
    row.update(zip(keys, values))
    return {k: row[k] for k in out}  # the method's order


def _validate(run: TrainingRun, models: dict, val_set) -> dict[str, SegMetrics]:
    """mIoU of each of ``models`` on ``val_set`` (the validation or the selection split)."""
    bundle = run.bundle
    return {
        name: evaluate(
            m,
            val_set,
            bundle.num_classes,
            run.cfg.eval,
            run.device,
            bundle.ignore_index,
            run.dist.rank,
            run.dist.world_size,
        )
        for name, m in models.items()
    }


def _record_validation(
    run: TrainingRun,
    final: dict,
    select: dict,
    writer,
    bar,
    out_dir: Path,
    checkpoints: Checkpointer,
) -> None:
    """Log a validation and keep the best student (``best.pt``, from a good state only).

    ``final``: validation metrics by model; ``select``: the student's on the selection split
    (``data.select``), empty when off. Rows: ``miou_<model>`` on validation,
    ``select_miou_student`` on the selection split. The best student is the one with the best
    selection mIoU (else the best validation mIoU); ``state.best["miou"]`` is always its
    validation mIoU, ``state.best["select_miou"]`` its selection mIoU."""
    state, done = run.state, run.state.step
    row = {"step": done, "time": state.train_seconds}
    row.update({f"miou_{n}": r.miou for n, r in final.items()})
    row.update({f"select_miou_{n}": r.miou for n, r in select.items()})
    state.history.append({**row, "iou": {n: r.iou for n, r in final.items()}})
    writer.write(row, prefix="val")
    if select:
        improved = select["student"].miou > state.best.get("select_miou", float("-inf"))
        chosen = {"select_miou": select["student"].miou}
    else:
        improved = final["student"].miou > state.best["miou"]
        chosen = {}
    if improved:
        state.best = {"miou": final["student"].miou, "step": done, **chosen}
        checkpoints.check_good(state)  # on every rank: they all stop together
    if run.dist.is_main:
        parts = "  ".join(f"{n} {r.miou:5.2f}" for n, r in final.items())
        if select:
            best = state.best
            bar.write(
                f"step {done:>6}  val mIoU  {parts}  select mIoU student "
                f"{select['student'].miou:5.2f}  (best.pt: step {best['step']}, select "
                f"{best['select_miou']:.2f}, val {best['miou']:.2f})"
            )
        else:
            bar.write(f"step {done:>6}  val mIoU  {parts}  (best {state.best['miou']:.2f})")
        if improved:
            save_checkpoint(state.state_dict(), out_dir / "best.pt")
