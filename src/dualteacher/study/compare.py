"""Train several methods on the same data, model, seeds and budget, and compare them.

``dualteacher compare CONFIG --methods a,b [--steps N | --minutes M] [--seeds K]`` and
``dualteacher demo`` both run ``compare``. A method may carry a budget multiplier,
``supervised:3x`` (three times the steps or minutes of the others): how a baseline trained to
its plateau enters the same table. Every run keeps its own directory
``OUT/<method>[_<k>x][_seed<s>]`` (re-running on the same ``OUT`` resumes unfinished runs and
reuses finished ones, with the figures measured while they trained, kept in
``OUT/<run>/result.json``). Every method name and run config is checked before the first run
trains. Written to ``OUT``:

- ``summary.json``: ``{"results": [{"method", "miou", "best_miou", "seconds", ...}], ...}``,
  one entry per method (``best_miou``: the validation mIoU of ``best.pt``, the checkpoint
  chosen on the selection split of ``data.select``, or with ``best_chosen_on: "val"`` on the
  validation set itself, an optimistic figure; ``summary["select"]`` says which), means
  and standard deviations over seeds (mIoU in percent), per-seed values, step time and peak
  memory; against every ``supervised`` entry, the paired difference
  per seed (same seed, same data) with its mean, standard deviation and 95 % interval
  (Student's t), for the final and for the best mIoU (``vs``);
- ``summary.md``: the same as Markdown tables;
- ``miou_vs_time.png``: validation mIoU of the student against training wall-clock, the mean
  over seeds with a band from the lowest to the highest seed, a horizontal line at the
  supervised row's best mIoU and a marker where each seed's curve first reaches it.

Time to accuracy (``time_to_accuracy``), per row and seed, on the runs' training wall-clock
(``TIME_COUNTED``): the seconds to reach the best mIoU of the supervised row (the row with the
largest budget when there are several: the strongest baseline in the table), and the mean mIoU
over time (the area under the mIoU-vs-time curve divided by its length, from the latest first
validation to the last one of the comparison; a run that has ended keeps its final mIoU, a row
``A@B`` is B's curve followed by its own); with their mean and spread over seeds, in the
tables, ``summary.json`` and the plot.

Budgets. ``steps``: every run does that many optimizer steps. ``minutes``: every run gets that
much training wall-clock (validation excluded). A short timing probe per method (2 warm-up
and 8 timed steps of the very step ``train`` runs) turns the minutes into a step count, so the
learning-rate schedule, which is defined on ``train.steps``, runs to its end;
``train.max_minutes`` also stops a run that turns out slower than the probe, in which case its
schedule is cut short (``stopped_by_time``). Either budget replaces the config's
``train.epochs`` (the paper configs set it), which would otherwise set the run length. Without
a budget, the config's own length applies (``train.epochs`` or ``train.steps``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from dualteacher.checkpoint import find_resume_checkpoint
from dualteacher.config import Config, check_values, load_config, to_yaml
from dualteacher.data import build_data, run_index
from dualteacher.engine.init_from import same_checkpoint
from dualteacher.engine.run import run_length
from dualteacher.engine.trainer import TrainResult, measure_step_seconds
from dualteacher.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DualTeacherError,
    RunsFailed,
    TrainingStopped,
)
from dualteacher.methods import METHODS
from dualteacher.outputs import write_json, write_text, writes_under
from dualteacher.plots import plot_miou_vs_time
from dualteacher.study.train import train

PROBE_WARMUP, PROBE_STEPS = 2, 8
BASELINE = "supervised"  # the method every other one is paired against


@dataclass(frozen=True)
class RunSpec:
    """One row of a comparison: a method, a multiplier of the shared budget and, for a warm
    start, the row whose run of the same seed it starts from (``start_from``, a label)."""

    method: str
    budget_mult: float = 1.0
    start_from: str | None = None

    @property
    def label(self) -> str:
        """``supervised``, ``supervised:3x`` or ``dual_teacher@supervised:2x``: the name in
        tables and ``summary.json``."""
        name = self.method if self.budget_mult == 1 else f"{self.method}:{self.budget_mult:g}x"
        return name if self.start_from is None else f"{name}@{self.start_from}"

    @property
    def dirname(self) -> str:
        name = self.method if self.budget_mult == 1 else f"{self.method}_{self.budget_mult:g}x"
        if self.start_from is None:
            return name
        return f"{name}_from_{self.start_from.replace(':', '_')}"


def parse_run_specs(methods: list[str]) -> list[RunSpec]:
    """``["supervised:3x", "dual_teacher@supervised:3x"]`` -> run specs; a clear error for a
    bad entry. ``A@B``: row A starts each seed from the final checkpoint of row B's run of that
    seed (``train.init_from``), B another row of the list that itself starts from scratch."""
    specs = []
    for text in methods:
        head, at, source = text.strip().partition("@")
        if at and not source.strip():
            raise ConfigError(
                f"--methods entry {text!r}: name the row to start from after '@', e.g. "
                "dual_teacher@supervised:2x"
            )
        name, value = _name_and_multiplier(head, text)
        start = None
        if source.strip():  # the source's label as its own row spells it: 2.0x is 2x
            if "@" in source:
                raise ConfigError(
                    f"--methods entry {text!r}: a row starts from one row that starts from "
                    "scratch, e.g. dual_teacher@supervised:2x"
                )
            start = RunSpec(*_name_and_multiplier(source, text)).label
        specs.append(RunSpec(name, value, start))
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"--methods lists {', '.join(dupes)} more than once")
    scratch = {s.label for s in specs if s.start_from is None}
    for s in specs:
        if s.start_from is not None and s.start_from not in scratch:
            raise ConfigError(
                f"--methods entry {s.label!r} starts from {s.start_from!r}, which is not a row "
                f"of --methods that starts from scratch ({', '.join(sorted(scratch)) or 'none'}):"
                f" add {s.start_from} to --methods, e.g. --methods {s.start_from},{s.label}"
            )
    return specs


def _name_and_multiplier(text: str, entry: str) -> tuple[str, float]:
    """``"supervised:3x"`` -> ``("supervised", 3.0)``; ``entry``: the --methods entry (errors)."""
    name, _, mult = text.strip().partition(":")
    value = 1.0
    if mult:
        try:
            value = float(mult.removesuffix("x"))
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(
                f"--methods entry {entry!r}: the budget multiplier must be a positive number "
                "followed by x, e.g. supervised:3x"
            )
    return name.strip(), value


def paired_difference(values: list[float], reference: list[float]) -> dict:
    """Per-seed differences ``values[k] - reference[k]`` (the same seed and data on both
    sides), their mean, sample standard deviation and the 95 % confidence interval of the mean
    difference from Student's t with ``n - 1`` degrees of freedom (None for one seed)."""
    d = [a - b for a, b in zip(values, reference)]
    n = len(d)
    mean = _mean(d)
    std = _std(d)
    ci = None
    if std is not None:
        from scipy.stats import t  # here, not at the top: scipy.stats is slow to import

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"per_seed": d, "mean": mean, "std": std, "ci95": ci}


def _with(cfg: Config, method: str, seed: int, out_dir: Path | None, **train_kw) -> Config:
    return replace(
        cfg,
        method=replace(cfg.method, name=method),
        train=replace(
            cfg.train, seed=seed, out_dir=None if out_dir is None else str(out_dir), **train_kw
        ),
    )


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _std(xs: list[float]) -> float | None:
    """Sample standard deviation over seeds; None for one seed."""
    return statistics.stdev(xs) if len(xs) > 1 else None


@writes_under("out_dir")
def compare(
    cfg: Config,
    methods: list[str],
    out_dir: str | Path,
    seeds: list[int] | None = None,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    runs_dir: str | Path | None = None,
    jobs: int = 1,
    fresh: bool = False,
) -> dict:
    """Train every method for every seed with ``cfg``; write and return the summary.

    Args:
        cfg: the shared config (data, model, optimizer, ...); ``method.name`` and
            ``train.seed`` / ``train.out_dir`` are set per run.
        methods: registered method names.
        out_dir: where the runs and the summary go.
        seeds: seeds to run each method with (default: ``cfg.train.seed``).
        steps: step budget per run (default: the config's run length).
        minutes: training wall-clock budget per run instead of a step budget.
        runs_dir: where the run directories go (default ``out_dir``); comparisons that share
            it reuse each other's finished runs of the same method, seed and budget.
        jobs: runs trained at the same time, each in its own process with ``train.threads``
            (default: the CPUs divided by ``jobs``) and, when there are enough GPUs, its own GPU.
            Results do not depend on it beyond thread-count rounding; the seconds do: runs
            that share a machine time each other's contention.
        fresh: redo the runs whose directory holds a run planned for another budget (see
            ``check_budget``), deleting only the files compare and its training wrote there.
    """
    if steps is not None and minutes is not None:
        raise ConfigError("give a step budget or a time budget (--steps or --minutes), not both")
    if not methods:
        raise ConfigError("no methods to compare: give --methods m1,m2")
    if jobs < 1:
        raise ConfigError(f"jobs={jobs}: give at least one run at a time")
    if jobs > 1 and minutes is not None:
        raise ConfigError(
            f"--jobs {jobs} with --minutes: runs that train side by side slow each other down, "
            "so a time budget would not mean the same for every run; use --steps, or --jobs 1"
        )
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"minutes={minutes}: the time budget must be a positive number")
    if (steps is not None or minutes is not None) and cfg.train.epochs is not None:
        given = f"--steps {steps}" if steps is not None else f"--minutes {minutes:g}"
        print(f"{given} sets the length of every run: train.epochs={cfg.train.epochs} is not used")
        cfg = replace(cfg, train=replace(cfg.train, epochs=None))
    specs = parse_run_specs(methods)
    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, steps=steps))
    out_dir = Path(out_dir)
    runs_dir = out_dir if runs_dir is None else Path(runs_dir)
    seeds = list(seeds) if seeds else [cfg.train.seed]
    _check_runs(cfg, [sp.method for sp in specs], seeds)  # a typo costs no budget
    bundle = build_data(cfg.data, index=run_index(out_dir))  # the same data for every run
    _check_data(bundle, [sp.method for sp in specs], cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    length = run_length(cfg, bundle)[1]  # train.steps, or train.epochs x steps per epoch

    probed: dict[str, float] = {}  # seconds per step of each method, from its probe
    planned: dict[str, dict] = {}
    for spec in specs:
        if minutes is None:
            planned[spec.label] = {"steps": max(1, round(length * spec.budget_mult))}
            continue
        if spec.method not in probed:
            print(f"timing probe for {spec.method} ({PROBE_WARMUP} + {PROBE_STEPS} steps) ...")
            probe = _with(cfg, spec.method, seeds[0], None, progress=False)
            probed[spec.method] = measure_step_seconds(
                probe, PROBE_STEPS, PROBE_WARMUP, bundle=bundle
            )
        sec, spec_minutes = probed[spec.method], minutes * spec.budget_mult
        n = max(1, math.floor(spec_minutes * 60 / sec))
        planned[spec.label] = {"steps": n, "minutes": spec_minutes, "probe_step_seconds": sec}
        print(f"  {spec.label}: {sec:.3f} s/step -> {n} steps in {spec_minutes:g} min")

    def run_name(spec: RunSpec, seed: int) -> str:
        return spec.dirname if len(seeds) == 1 else f"{spec.dirname}_seed{seed}"

    by_label = {spec.label: spec for spec in specs}
    todo: list[tuple[RunSpec, str, Config]] = []  # (row, run name, run config)
    for spec in specs:
        for seed in seeds:
            name = run_name(spec, seed)
            kw: dict = {}
            if minutes is not None or spec.budget_mult != 1:
                # an explicit length; the config's own (train.epochs) only for a plain row
                kw = {"steps": planned[spec.label]["steps"], "epochs": None}
            if minutes is not None:
                kw["max_minutes"] = planned[spec.label]["minutes"]
            if spec.start_from is not None:  # the source row's final checkpoint, same seed
                source_dir = runs_dir / run_name(by_label[spec.start_from], seed)
                kw["init_from"] = str(source_dir / "latest.pt")
            todo.append((spec, name, _with(cfg, spec.method, seed, runs_dir / name, **kw)))
    # Rows that start from another row's runs train after them: sources first, in both waves.
    todo.sort(key=lambda run: run[0].start_from is not None)
    # every run's budget against the one its directory was planned for, before any trains
    for *_, run_cfg in todo:
        check_budget(run_cfg, fresh, minutes is not None)
    if jobs > 1:
        # a warm-started run waits for its source run (same seed), and only for that one
        needs = {
            name: run_name(by_label[sp.start_from], c.train.seed)
            for sp, name, c in todo
            if sp.start_from is not None
        }
        _train_in_parallel([(name, c) for _, name, c in todo], jobs, out_dir, needs)
    runs: dict[str, list[TrainResult]] = {}
    for spec, name, run_cfg in todo:
        # after parallel training, each finished run is only validated here
        print(f"\n=== {name} ===")
        try:
            result = _train_keeping_figures(run_cfg, bundle)
        except TrainingStopped as e:
            if e.label != "interrupted":
                raise
            # the run's own hint names `dualteacher train`; this run belongs to the compare
            what = str(e).split(" written. ")[0]
            raise TrainingStopped(
                f"{name}: {what}{' written' if ' written. ' in str(e) else ''}. Rerun the same "
                "compare command (same config, --methods, budget and --out) to resume: "
                "finished runs are reused, this one continues from its checkpoint",
                exit_code=e.exit_code,
                label=e.label,
            ) from None
        runs.setdefault(spec.label, []).append(result)

    results, tta = summarise_runs(specs, runs, seeds, planned)
    if minutes is not None:
        budget: dict = {"minutes": minutes}
    else:
        budget = {"steps": length}
        if cfg.train.epochs is not None:
            budget["epochs"] = cfg.train.epochs
    summary = {
        "results": results,
        "budget": budget,
        "seeds": seeds,
        "jobs": jobs,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "classes": list(bundle.classes),  # the order of class_iou_per_seed
        "select": _select_info(bundle, cfg),
        "time_to_accuracy": tta,
    }
    write_summary(out_dir, summary, runs)
    return summary


def write_summary(out_dir: Path, summary: dict, runs: dict[str, list[TrainResult]]) -> None:
    """``summary.json``, ``summary.md`` and ``miou_vs_time.png`` into ``out_dir``, and the
    table on stdout."""
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", format_markdown(summary))
    results, tta = summary["results"], summary["time_to_accuracy"]
    _plot(runs, out_dir / "miou_vs_time.png", results, tta)
    print("\n" + format_summary(results, tta))
    print(
        f"\nsummary: {out_dir / 'summary.json'}  table: {out_dir / 'summary.md'}  "
        f"plot: {out_dir / 'miou_vs_time.png'}"
    )


def _select_info(bundle, cfg: Config) -> dict:
    """What picked every run's ``best.pt`` (and so ``best_miou``): the selection split of
    ``data.select`` (its size, spec and draw seed), or the validation set itself."""
    if bundle.select is None:
        return {"chosen_on": "val", "images": 0}
    return {
        "chosen_on": "select",
        "images": len(bundle.select),
        "data.select": cfg.data.select,
        "data.select_seed": cfg.data.select_seed,
    }


def _check_runs(cfg: Config, methods: list[str], seeds: list[int]) -> None:
    """Every method name, and the config of every run, before the first run trains."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)} in --methods. Available: "
            f"{', '.join(METHODS)}; nothing was trained"
        )
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    for method in methods:
        for seed in seeds:
            check_values(_with(cfg, method, seed, None))


def _check_data(bundle, methods: list[str], cfg: Config) -> None:
    """Methods that train on unlabelled images need some: said before any run starts."""
    if bundle.unlabeled is not None and len(bundle.unlabeled) > 0:
        return
    needs = [m for m in methods if METHODS[m].uses_unlabeled]
    if needs:
        hint = getattr(bundle.unlabeled, "empty_hint", "") or "give data.unlabeled=SPLIT_FILE"
        raise DataError(
            f"the unlabelled set of data.name={cfg.data.name} is empty, but {', '.join(needs)} "
            f"train(s) on unlabelled images: {hint}; nothing was trained"
        )


BUDGET_FILE = "compare_budget.json"  # per run directory: the budget it was planned for
BUDGET_KEYS = ("train.steps", "train.epochs", "train.max_minutes", "optim.schedule_steps")


def run_budget(cfg: Config, by_time: bool) -> dict:
    """The budget and schedule a run is planned for, as resolved. With a time budget the step
    count comes from a timing probe (it varies from one probe to the next): the minutes are
    the budget then."""
    values = {
        "train.steps": cfg.train.steps,
        "train.epochs": cfg.train.epochs,
        "train.max_minutes": cfg.train.max_minutes,
        "optim.schedule_steps": cfg.optim.schedule_steps,
    }
    if by_time:
        values.pop("train.steps")
    if cfg.train.init_from is not None:  # a warm start: the run it starts from is its plan too
        values["train.init_from"] = cfg.train.init_from
    return values


def same_budget(recorded: dict | None, budget: dict) -> bool:
    """Whether a run directory's recorded budget is ``budget``. A warm start's source counts as
    a checkpoint, as resuming judges it (``same_checkpoint``): the same file by another path,
    or a copy of it (supervised runs copied into another suite's folder), is the same plan."""
    if not isinstance(recorded, dict):
        return False
    key = "train.init_from"
    a, b = recorded.get(key), budget.get(key)
    if a is not None and b is not None and same_checkpoint(a, b):
        recorded = {**recorded, key: b}
    return recorded == budget


def _describe(budget: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in budget.items() if v is not None) or "the config's"


def _started(run_dir: Path) -> bool:
    """Whether a run has trained in ``run_dir`` (a checkpoint or its figures are there)."""
    return any(run_dir.glob("*.pt")) or (run_dir / RESULT_FILE).is_file()


# what a compare run writes in its directory (train's outputs and compare's own): the only
# files ``--fresh`` deletes
RUN_OUTPUTS = ("*.pt", "config.yaml", "metrics.jsonl", "curves.png", "result.json",
               "compare_run.yaml", "train.log", "data_index.npz", ".*.tmp")  # fmt: skip
RUN_OUTPUT_DIRS = ("tb",)  # TensorBoard's event files


def _run_outputs(run_dir: Path) -> list[Path]:
    found = {f for pattern in RUN_OUTPUTS for f in run_dir.glob(pattern) if f.is_file()}
    for d in RUN_OUTPUT_DIRS:
        if (run_dir / d).is_dir() and not (run_dir / d).is_symlink():
            found |= {f for f in (run_dir / d).rglob("events.out.tfevents.*") if f.is_file()}
    return sorted(found)


def check_budget(cfg: Config, fresh: bool, by_time: bool) -> None:
    """A run directory's results belong to the budget it was planned for (``BUDGET_FILE``).

    A run planned for this budget is reused (or resumed); one planned for another is refused
    with one line naming both, since resuming it would extend (or cut) a finished schedule and
    report it as a run of the new length; ``fresh`` redoes it instead, deleting only the files
    a compare run writes there (``RUN_OUTPUTS``), never anything else in the folder. A run of
    an older compare, which wrote no ``BUDGET_FILE``, is judged by the budget its own config
    records (its newest checkpoint's, else its ``config.yaml``); a run whose budget cannot be
    read at all is refused the same way, never adopted unseen."""
    run_dir = Path(cfg.train.out_dir)
    record_path = run_dir / BUDGET_FILE
    budget = run_budget(cfg, by_time)
    record = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            record = None
    if record is not None and same_budget(record.get("budget"), budget):
        return
    if not _started(run_dir):  # nothing trained there yet: this compare plans it
        write_json(record_path, {"budget": budget})
        return
    if record is not None:
        planned, source = record.get("budget") or {}, ""
    else:
        planned, source = _budget_of_run(run_dir, by_time)
        if same_budget(planned, budget):  # an older compare's run of this budget: reused
            write_json(record_path, {"budget": budget})
            return
    if not fresh:
        if planned is None:
            raise ConfigError(
                f"{run_dir} holds a run of an older compare that recorded no budget "
                f"({BUDGET_FILE}) and has no readable config (a checkpoint or config.yaml) to "
                f"read it from, so it may belong to another budget than this compare's "
                f"{_describe(budget)}. Use another --out, or pass --fresh to redo it (only the "
                "files compare wrote there are deleted)"
            )
        raise ConfigError(
            f"{run_dir} holds a run planned for {_describe(planned)}{source}, not for this "
            f"compare's {_describe(budget)}: its results belong to that budget. Use another "
            "--out, rerun with the same budget, or pass --fresh to redo those runs (only the "
            "files compare wrote there are deleted)"
        )
    removed = _run_outputs(run_dir)
    for f in removed:
        f.unlink()
    for d in RUN_OUTPUT_DIRS:
        if (run_dir / d).is_dir() and not any((run_dir / d).iterdir()):
            (run_dir / d).rmdir()
    print(f"--fresh: removed {len(removed)} file(s) of the earlier run in {run_dir}")
    write_json(record_path, {"budget": budget})


def _budget_of_run(run_dir: Path, by_time: bool) -> tuple[dict | None, str]:
    """The budget a run without ``BUDGET_FILE`` was trained for, from the config its newest
    checkpoint (else its ``config.yaml``) records, and where it was read (for messages);
    ``(None, "")`` when neither can be read."""
    try:
        found = find_resume_checkpoint(run_dir)
    except CheckpointError:  # every checkpoint there is unreadable
        found = None
    try:
        if found is not None:
            stored, where = found[1]["config"], found[0]
        elif (run_dir / "config.yaml").is_file():
            where = run_dir / "config.yaml"
            stored = yaml.safe_load(where.read_text())
        else:
            return None, ""
        if not isinstance(stored, dict):
            return None, ""
        recorded = load_config(None, base=stored)
    except (OSError, yaml.YAMLError, ConfigError):
        return None, ""
    return run_budget(recorded, by_time), f" (as its {where.name} records; no {BUDGET_FILE})"


RESULT_FILE = "result.json"  # per run directory: the figures measured while it trained
RUN_CONFIG = "compare_run.yaml"  # per run directory, with --jobs: the run a worker trains
RUN_LOG = "train.log"  # per run directory, with --jobs: the worker's output


def _train_in_parallel(
    todo: list[tuple[str, Config]], jobs: int, out_dir: Path, needs: dict[str, str] | None = None
) -> None:
    """Train the runs ``jobs`` at a time, each in its own process (``--run-one``).

    ``needs[name]``: the run that run ``name`` starts from; it starts once that one has
    finished, and is not trained when that one failed. A free slot takes a source run first
    (others wait for it), else the costliest run whose source is done. A worker writes what
    ``train`` prints to ``RUN_DIR/train.log``; a failed run is reported with the end of its
    log once the others have finished (their work is kept either way)."""
    needs = needs or {}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # Longest first, so that no slot idles at the end while one long run trains alone.
    pending = sorted(todo, key=lambda run: -_relative_cost(run[1]))
    running: dict[int, tuple[str, Path, subprocess.Popen, object]] = {}  # slot -> run
    failed: list[tuple[str, Path | None]] = []  # None: not trained (its source failed)
    print(f"training {len(todo)} runs, {jobs} at a time (one process each, logs in RUN_DIR)")
    waiting = {name for name, _ in todo}  # not finished yet (pending or running)
    sources = set(needs.values())
    while pending or running:
        for run in [r for r in pending if needs.get(r[0]) in {n for n, _ in failed}]:
            pending.remove(run)  # its source failed: nothing to start from
            waiting.discard(run[0])
            failed.append((run[0], None))
            print(f"  NOT TRAINED {run[0]}: {needs[run[0]]}, which it starts from, failed")
        for slot in range(jobs):
            # sources first (a run others start from unblocks them), then the costliest
            ready = [r for r in pending if needs.get(r[0]) not in waiting]
            ready.sort(key=lambda r: r[0] not in sources)
            if slot in running or not ready:
                continue
            name, run_cfg = ready[0]
            pending.remove(ready[0])
            if run_cfg.train.threads is None:
                run_cfg = replace(run_cfg, train=replace(run_cfg.train, threads=threads))
            run_cfg = replace(run_cfg, train=replace(run_cfg.train, progress=False))
            run_dir = Path(run_cfg.train.out_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / RUN_CONFIG, to_yaml(run_cfg))
            env = dict(os.environ)
            if gpus >= jobs:  # one GPU per slot; with fewer GPUs the runs share them
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
            log = open(run_dir / RUN_LOG, "w")  # noqa: SIM115 - closed when the worker ends
            cmd = [sys.executable, "-m", "dualteacher.study.compare", "--run-one", str(run_dir)]
            cmd += ["--index-dir", str(out_dir)]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[slot] = (name, run_dir, proc, log)
            print(f"  started {name} (log: {run_dir / RUN_LOG})")
        time.sleep(0.5)
        for slot, (name, run_dir, proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[slot]
            waiting.discard(name)
            if proc.returncode == 0:
                print(f"  finished {name}")
            else:
                failed.append((name, run_dir))
                print(f"  FAILED {name} (exit status {proc.returncode})")
    if failed:
        tails = "\n".join(
            f"--- {name}: end of {run_dir / RUN_LOG} ---\n"
            + "\n".join((run_dir / RUN_LOG).read_text(errors="replace").splitlines()[-15:])
            for name, run_dir in failed
            if run_dir is not None  # None: not trained, its source failed
        )
        raise RunsFailed(
            f"{len(failed)} of {len(todo)} runs failed: {', '.join(n for n, _ in failed)}. "
            f"The finished runs are kept; fix the cause and run the same command again to "
            f"train only what is missing.\n{tails}"
        )


def _relative_cost(cfg: Config) -> float:
    """A rough run cost for ordering: steps (or epochs), x3 for methods that also pass
    unlabelled images through a teacher and the student (2-3x a supervised step on the demo)."""
    steps = cfg.train.steps if cfg.train.epochs is None else cfg.train.epochs
    return steps * (3.0 if METHODS[cfg.method.name].uses_unlabeled else 1.0)


def _run_one(run_dir: Path, index_dir: Path) -> None:
    """Worker of ``--jobs``: train the run configured in ``RUN_DIR/compare_run.yaml``."""
    cfg = load_config(run_dir / RUN_CONFIG)
    bundle = build_data(cfg.data, index=run_index(index_dir))
    _train_keeping_figures(cfg, bundle)


def _train_keeping_figures(cfg: Config, bundle) -> TrainResult:
    """``train``, and the measured figures (peak memory) of a run that was already finished:
    a re-run only validates it, and what it measures then is not the training's."""
    path = Path(cfg.train.out_dir) / RESULT_FILE
    stored = None
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
    result = train(cfg, bundle=bundle)
    trained_now = not (
        stored is not None
        and stored.get("steps") == result.steps
        and stored.get("train_seconds") == result.train_seconds  # no step ran in this process
    )
    if not trained_now:
        result.peak_memory_mb = stored["peak_memory_mb"]
        result.memory_kind = stored["memory_kind"]
    else:
        figures = {
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "peak_memory_mb": result.peak_memory_mb,
            "memory_kind": result.memory_kind,
        }
        write_json(path, figures)
    return result


def summarise_runs(
    specs: list[RunSpec], runs: dict[str, list[TrainResult]], seeds: list[int], planned: dict
) -> tuple[list[dict], dict]:
    """The rows of ``summary.json`` (one per spec, over its seeds' runs, with the paired
    differences and the time to accuracy) and the ``time_to_accuracy`` summary."""
    results = [_summarise(s, runs[s.label], seeds, planned[s.label]) for s in specs]
    for row, spec in zip(results, specs):
        if spec.start_from is not None:  # what the warm start cost, seed by seed
            row["start_from"] = spec.start_from
            row["start_seconds_per_seed"] = [r.train_seconds for r in runs[spec.start_from]]
    _add_paired_differences(results, specs)
    tta = add_time_to_accuracy(results, run_curves(runs, results))
    return results, tta


# What the seconds of the time to accuracy are: ``TrainResult.history``'s ``time``, the
# ``time`` of metrics.jsonl's validation rows.
TIME_COUNTED = (
    "training wall-clock: the seconds of the training steps (data loading, forward and "
    "backward passes, optimizer, EMA) summed from the run's first step (for a row A@B, from "
    "the first step of B's run it starts from); validation, checkpoint writing, logging and "
    "building the run are not counted"
)

Curve = list[tuple[float, float]]  # (training seconds, student validation mIoU), in time order


def run_curves(runs: dict[str, list[TrainResult]], results: list[dict]) -> dict[str, list[Curve]]:
    """Per row, per seed: ``(training seconds, student validation mIoU)`` of every validation.
    A row that starts from another row's run (``start_seconds_per_seed``) counts that run's
    training seconds first: a user pays them before its first step."""
    start = {r["method"]: r.get("start_seconds_per_seed") for r in results}
    curves = {}
    for label, rs in runs.items():
        offsets = start.get(label) or [0.0] * len(rs)
        curves[label] = [
            [(t0 + h["time"], h["miou_student"]) for h in r.history] for r, t0 in zip(rs, offsets)
        ]
    return curves


def time_to_reach(curve: Curve, target: float) -> float | None:
    """Training seconds at the first validation whose mIoU is at least ``target``; None when
    no validation of the run reaches it. Validations are where the mIoU is known, so the time
    is resolved to the validation interval (``train.eval_every``), not interpolated."""
    return next((t for t, miou in curve if miou >= target), None)


def timelines(curves: dict[str, list[Curve]], results: list[dict]) -> dict[str, list[Curve]]:
    """Per row, per seed: the mIoU a user has at each time. A row that starts from another
    row's run (``start_from``) is that run's curve (same seed) followed by its own: until its
    first step the user has the source run's model."""
    source = {r["method"]: r.get("start_from") for r in results}
    return {
        label: [
            (curves[source[label]][i] if source.get(label) in curves else []) + curve
            for i, curve in enumerate(rows)
        ]
        for label, rows in curves.items()
    }


def time_span(curves: list[Curve]) -> tuple[float, float] | None:
    """From the latest first validation to the latest last one: the seconds over which every
    run has a model (a run that has ended keeps its final one). None when empty."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    start, end = max(c[0][0] for c in curves), max(c[-1][0] for c in curves)
    return (start, end) if end > start else None


def mean_miou_over(curve: Curve, span: tuple[float, float]) -> float:
    """Mean mIoU of ``curve`` over ``span``: the area under the curve, drawn as
    ``miou_vs_time.png`` draws it (straight lines between validations) and flat at its last
    mIoU after its last validation, from ``span[0]`` to ``span[1]`` (trapezoids), divided by
    the span's length."""
    t, miou = np.array(curve, dtype=float).T  # (validations,) each
    a, b = span
    grid = np.concatenate([[a], t[(t > a) & (t < b)], [b]])
    return float(np.trapezoid(np.interp(grid, t, miou), grid) / (b - a))  # interp holds the ends


def add_time_to_accuracy(results: list[dict], curves: dict[str, list[Curve]]) -> dict:
    """Per row of ``results``: ``time_to_target_per_seed`` (seconds, None: never in budget),
    ``time_to_target`` and ``time_to_target_std`` (mean and sample std over the seeds that
    reached it; None if none or, for the std, fewer than two), ``time_to_target_reached``
    (how many seeds), and ``mean_miou_over_time_per_seed`` / ``mean_miou_over_time`` /
    ``mean_miou_over_time_std`` (``mean_miou_over`` the ``time_span`` of every row's
    ``timelines``). The target is
    the ``best_miou`` (mean over seeds) of the supervised row with the largest budget, the
    first of them on a tie; without a supervised row, no time to target. Returns the summary:
    ``reference``, ``target_miou``, ``span_seconds``, ``time`` (``TIME_COUNTED``)."""
    refs = [r for r in results if r["base_method"] == BASELINE]
    ref = max(refs, key=lambda r: r["budget_mult"]) if refs else None  # first of the largest
    target = ref["best_miou"] if ref is not None else None
    timeline = timelines(curves, results)
    span = time_span([c for rows in timeline.values() for c in rows])
    for row in results:
        seed_curves = curves[row["method"]]
        times = [time_to_reach(c, target) for c in seed_curves] if ref is not None else None
        reached = [t for t in times if t is not None] if times is not None else []
        row["time_to_target_per_seed"] = times
        row["time_to_target"] = _mean(reached) if reached else None
        row["time_to_target_std"] = _std(reached)
        row["time_to_target_reached"] = len(reached) if times is not None else None
        # (a run without a validation, none in practice, has no curve: None for its seed)
        means = (
            [mean_miou_over(c, span) if c else None for c in timeline[row["method"]]]
            if span
            else None
        )
        known = [m for m in means if m is not None] if means is not None else []
        row["mean_miou_over_time_per_seed"] = means
        row["mean_miou_over_time"] = _mean(known) if known else None
        row["mean_miou_over_time_std"] = _std(known)
    return {
        "reference": ref["method"] if ref is not None else None,
        "target_miou": target,
        "span_seconds": list(span) if span is not None else None,
        "time": TIME_COUNTED,
    }


def _add_paired_differences(results: list[dict], specs: list[RunSpec]) -> None:
    """``row["vs"][ref]``: the paired difference of every row against every ``supervised``
    row ``ref`` (one per budget multiplier), for the final and the best mIoU."""
    refs = [(i, r) for i, (r, s) in enumerate(zip(results, specs)) if s.method == BASELINE]
    for j, (row, spec) in enumerate(zip(results, specs)):
        row["vs"] = {
            ref["method"]: {
                key: paired_difference(row[f"{key}_per_seed"], ref[f"{key}_per_seed"])
                for key in ("miou", "best_miou")
            }
            for i, ref in refs
            # a supervised row only against the supervised rows above it (not both ways)
            if i < j or (i != j and spec.method != BASELINE)
        }


def _summarise(spec: RunSpec, rs: list[TrainResult], seeds: list[int], plan: dict) -> dict:
    mious = [r.miou for r in rs]
    bests = [r.best_miou for r in rs]
    teachers = sorted({n for r in rs for n in r.final if n != "student"})
    row = {
        "method": spec.label,
        "base_method": spec.method,
        "budget_mult": spec.budget_mult,
        "miou": _mean(mious),
        "best_miou": _mean(bests),
        "seconds": _mean([r.train_seconds for r in rs]),
        "miou_std": _std(mious),
        "best_miou_std": _std(bests),
        "steps": rs[0].steps if len({r.steps for r in rs}) == 1 else [r.steps for r in rs],
        "planned_steps": plan["steps"],
        "step_seconds": _mean([r.step_seconds for r in rs]),
        "peak_memory_mb": max(r.peak_memory_mb for r in rs),
        "memory_kind": rs[0].memory_kind,
        "seeds": seeds,
        "miou_per_seed": mious,
        "best_miou_per_seed": bests,
        "best_step_per_seed": [r.best_step for r in rs],
        "best_chosen_on": rs[0].best_chosen_on,  # "select" (data.select) or "val"
        "best_select_miou_per_seed": [r.best_select_miou for r in rs],
        "stopped_by_time": [r.stopped_by_time for r in rs],
        "final_miou_teachers": {t: _mean([r.final[t].miou for r in rs]) for t in teachers},
        # the student's final per-class IoU (%), per seed; None where a class is undefined
        "class_iou_per_seed": [
            [None if math.isnan(v) else v for v in r.final["student"].iou] for r in rs
        ],
        "run_dirs": [r.out_dir for r in rs],
    }
    if "probe_step_seconds" in plan:
        row["probe_step_seconds"] = plan["probe_step_seconds"]
    return row


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def best_note(results: list[dict]) -> str:
    """What "best" means in a table of ``results``: which set chose the checkpoint."""
    if results and all(r.get("best_chosen_on") == "select" for r in results):
        return (
            "best: the validation mIoU of the checkpoint with the best mIoU on the selection "
            "split (data.select, held out of training), not the best validation mIoU"
        )
    return (
        "best: the best validation mIoU of the run, chosen on the validation set itself "
        "(optimistic; data.select holds out a selection split to choose on instead)"
    )


def _best_header(results: list[dict]) -> str:
    on_select = results and all(r.get("best_chosen_on") == "select" for r in results)
    return "best (by select)" if on_select else "best (by val)"


def _seconds(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def time_to_target_text(row: dict) -> str:
    """``412 ± 31 s``, ``412 s (2/3 seeds; the others never)``, ``never`` or ``n/a`` (no
    supervised row to take the target from)."""
    times = row.get("time_to_target_per_seed")
    if times is None:
        return "n/a"
    k = row["time_to_target_reached"]
    if k == 0:
        return "never"
    std = row["time_to_target_std"]
    text = _seconds(row["time_to_target"]) + ("" if std is None else f" ± {_seconds(std)}")
    return (
        f"{text} s" if k == len(times) else f"{text} s ({k}/{len(times)} seeds; the others never)"
    )


def _mean_over_time_text(row: dict) -> str:
    if row.get("mean_miou_over_time") is None:
        return "n/a"
    return _pm(row["mean_miou_over_time"], row["mean_miou_over_time_std"])


def tta_note(tta: dict) -> str:
    """What the time-to-accuracy columns mean, in one paragraph."""
    if tta["reference"] is None:
        target = "time to target: n/a, no supervised row to take the target from"
    else:
        target = (
            f"time to target: training seconds to the first validation with a student mIoU of "
            f"at least {tta['target_miou']:.2f}, the best mIoU of {tta['reference']} (mean over "
            "seeds; never: not within the run's budget; mean ± std over the seeds that reach it)"
        )
    span = tta["span_seconds"]
    over = (
        "n/a, no run validates after the latest first validation"
        if span is None
        else f"{_seconds(span[0])}-{_seconds(span[1])} s, from the latest first validation to "
        "the last one: the area under the mIoU-vs-time curve (straight lines between "
        "validations; a run that has ended keeps its final mIoU; a row A@B is B's curve, then "
        "its own) over that span, divided by its length"
    )
    return f"{target}; mean mIoU over time: {over}. Time: {tta['time']}."


def format_summary(results: list[dict], tta: dict | None = None) -> str:
    """Plain-text table for the terminal; with ``tta`` (``add_time_to_accuracy``'s summary),
    the time to accuracy after it."""
    best = _best_header(results)
    w = max(16, *(len(r["method"]) + 2 for r in results))  # the method column fits every label
    head = f"{'method':<{w}}{'final mIoU':>16}{best:>17}{'seconds':>9}{'s/step':>8}{'MiB':>7}"
    lines = [head]
    for r in results:
        lines.append(
            f"{r['method']:<{w}}{_pm(r['miou'], r.get('miou_std')):>16}"
            f"{_pm(r['best_miou'], r.get('best_miou_std')):>17}{r['seconds']:>9.0f}"
            f"{r.get('step_seconds', float('nan')):>8.3f}{r.get('peak_memory_mb', 0):>7.0f}"
        )
    diffs = [
        f"  {r['method']} - {ref}: final {_diff_text(d['miou'])}, best {_diff_text(d['best_miou'])}"
        for r in results
        for ref, d in r.get("vs", {}).items()
    ]
    lines += [best_note(results)]
    if diffs:
        lines += ["", "paired difference per seed (mean [95% interval]; per seed):", *diffs]
    if tta is not None:
        lines += ["", f"{'method':<{w}}{'time to target':>34}{'mean mIoU over time':>22}"]
        lines += [
            f"{r['method']:<{w}}{time_to_target_text(r):>34}{_mean_over_time_text(r):>22}"
            for r in results
        ]
        lines.append(textwrap.fill(tta_note(tta), 100))
    return "\n".join(lines)


def _diff_text(d: dict) -> str:
    """``+3.10 [+1.20, +5.00]; +2.9 +3.4 +3.0`` (no interval for one seed)."""
    interval = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
    per_seed = " ".join(f"{x:+.1f}" for x in d["per_seed"])
    return f"{d['mean']:+.2f}{interval}; {per_seed}"


_MEMORY_NOTE = {
    "cuda_max_allocated": "peak CUDA memory allocated by tensors (torch.cuda.max_memory_allocated)",
    "peak_rss": "peak resident memory of the process during the run (Linux VmHWM)",
    "peak_rss_process": "peak resident memory of the process so far (getrusage)",
}


def format_markdown(summary: dict) -> str:
    """``summary.md``: the comparison table with how it was measured."""
    results = summary["results"]
    seeds = summary["seeds"]
    seed_list = ", ".join(map(str, seeds))
    spread = (
        f"as mean ± std over {len(seeds)} seeds ({seed_list})"
        if len(seeds) > 1
        else f"with seed {seed_list}"
    )
    budget = summary["budget"]
    budget_text = (
        f"{budget['minutes']:g} min of training per run"
        if "minutes" in budget
        else f"{budget['steps']} steps per run"
        + (f" ({budget['epochs']} epochs)" if "epochs" in budget else "")
    )
    if any(r.get("budget_mult", 1) != 1 for r in results):
        budget_text += " (a method named `name:Kx` got K times that)"
    lines = [
        "# Comparison",
        "",
        f"Data `{summary['data']}`, model `{summary['model']}`, {budget_text}; student mIoU "
        f"(%) {spread}.",
        "",
        f"| method | final mIoU | {_best_header(results)} | steps | train time (s) | s/step | "
        "peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        steps = r["steps"] if isinstance(r["steps"], int) else "/".join(map(str, r["steps"]))
        lines.append(
            f"| {r['method']} | {_pm(r['miou'], r.get('miou_std'))} | "
            f"{_pm(r['best_miou'], r.get('best_miou_std'))} | {steps} | {r['seconds']:.1f} | "
            f"{r['step_seconds']:.3f} | {r['peak_memory_mb']:.0f} |"
        )
    kinds = sorted({r["memory_kind"] for r in results})
    lines += [
        "",
        f"Final: the last validation; {best_note(results)}"
        + _select_size(summary)
        + ". Train time is the "
        "wall-clock of the training steps, validation excluded; s/step is its mean per step. "
        "Peak memory: " + "; ".join(_MEMORY_NOTE.get(k, k) for k in kinds) + ".",
    ]
    if summary.get("jobs", 1) > 1:
        lines.append(
            f"Runs trained {summary['jobs']} at a time, one process each: train times include "
            "the slowdown of sharing the machine, so compare them within this table only."
        )
    warm = [r for r in results if r.get("start_from")]
    if warm:
        lines.append(
            "A row `A@B` starts each seed from the final checkpoint of B's run of the same seed "
            "(`train.init_from`: student and teachers from it, a fresh optimizer and schedule); "
            "its steps and train time are its own, and its time to accuracy counts B's "
            "training time first."
        )
    if "minutes" in budget:
        lines.append(
            "Steps were set from a timing probe per method so that the learning-rate schedule "
            "ends with the budget; a run slower than its probe was stopped at the budget."
        )
    diffs = [(r, ref, d) for r in results for ref, d in r.get("vs", {}).items()]
    if diffs:
        lines += [
            "",
            "Paired difference against supervised, seed by seed (same seed, same data), mean "
            "± std and the 95 % interval of the mean (Student's t, n - 1 degrees of freedom):",
            "",
            "| method | against | final mIoU difference | best mIoU difference | per seed |",
            "|---|---|---|---|---|",
        ]
        for r, ref, d in diffs:
            per_seed = ", ".join(f"{x:+.2f}" for x in d["miou"]["per_seed"])
            lines.append(
                f"| {r['method']} | {ref} | {_md_diff(d['miou'])} | {_md_diff(d['best_miou'])} "
                f"| {per_seed} |"
            )
    tta = summary.get("time_to_accuracy")
    if tta is not None:
        target = (
            f"time to {tta['reference']}'s best mIoU ({tta['target_miou']:.2f})"
            if tta["reference"] is not None
            else "time to target"
        )
        span = tta["span_seconds"]
        over = "mean mIoU over time" + (
            "" if span is None else f" ({_seconds(span[0])}-{_seconds(span[1])} s)"
        )
        lines += ["", "Time to accuracy:", "", f"| method | {target} | {over} |", "|---|---|---|"]
        lines += [
            f"| {r['method']} | {time_to_target_text(r)} | {_mean_over_time_text(r)} |"
            for r in results
        ]
        lines += ["", tta_note(tta)[0].upper() + tta_note(tta)[1:]]
    teachers = [r for r in results if r.get("final_miou_teachers")]
    if teachers:
        lines += ["", "Final mIoU of the teachers:", ""]
        for r in teachers:
            parts = ", ".join(f"{t} {v:.2f}" for t, v in r["final_miou_teachers"].items())
            lines.append(f"- {r['method']}: {parts}")
    return "\n".join(lines) + "\n"


def _select_size(summary: dict) -> str:
    select = summary.get("select") or {}
    if select.get("chosen_on") != "select":
        return ""
    return (
        f": {select['images']} images (data.select={select['data.select']}, "
        f"data.select_seed={select['data.select_seed']}), the same for every run"
    )


def _md_diff(d: dict) -> str:
    text = f"{d['mean']:+.2f}" if d["std"] is None else f"{d['mean']:+.2f} ± {d['std']:.2f}"
    if d["ci95"] is not None:
        text += f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
    return text


def _plot(runs: dict[str, list[TrainResult]], path: Path, results: list[dict], tta: dict) -> None:
    target = crossings = None
    if tta["reference"] is not None:
        target = (tta["target_miou"], f"{tta['reference']} best ({tta['target_miou']:.2f})")
        # where each seed's curve first reaches the target (its time to target)
        crossings = {
            r["method"]: [t for t in r["time_to_target_per_seed"] if t is not None] for r in results
        }
    plot_miou_vs_time(run_curves(runs, results), path, target=target, crossings=crossings)


if __name__ == "__main__":  # the worker process of ``compare(..., jobs=N)``
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dualteacher.study.compare")
    ap.add_argument("--run-one", type=Path, required=True, help="run directory to train")
    ap.add_argument("--index-dir", type=Path, required=True, help="comparison output directory")
    args = ap.parse_args()
    try:
        _run_one(args.run_one, args.index_dir)
    except DualTeacherError as err:  # the user's input: the message, not a traceback
        print(f"error: {err}", flush=True)
        raise SystemExit(err.exit_code) from None
