"""The GPU check: every user-facing verb on one CUDA GPU, no network, one JSON of results.

Run through ``benchmarks/gpu_check.sh`` (which first installs the carried wheels, if any):

    bash benchmarks/gpu_check.sh                      # one CUDA GPU; sized for < 8 minutes
    bash benchmarks/gpu_check.sh --cpu --out r.json   # the same checks, tiny, on the CPU

Checks, in this order (a failing check does not stop the others):

- ``pytest_cuda``: the tests marked ``cuda`` (``pytest -m cuda``);
- ``train_amp_none``: the demo config on CUDA for a few hundred steps; the run that
  ``eval_whole``, ``eval_sliding`` and ``predict`` then use;
- ``bench_*``: ``dualteacher bench`` images/s of dual_teacher with deeplabv3plus-r101 @ 513 and
  segformer-b1 @ 512, batch 8 + 8, without and with AMP (bf16) + channels_last, and
  ``bench_speedup`` (the issue's criterion: >= 1.5x for deeplabv3plus-r101);
- ``bench_*_fp32``, ``bench_*_tf32``, ``bench_*_amp_fp16_cl`` (shorter: 3 timed steps) and
  ``flop_utilisation``: model FLOP utilisation of the same steps in fp32 (TF32 off), TF32,
  bf16 (the ``amp_bf16_cl`` bench) and fp16, of the peak bench measures in the same process
  (matrix product and convolution probes) and of the card's datasheet: one table;
- ``train_amp_bf16``, ``train_amp_fp16``, ``train_channels_last`` (bf16 + channels_last);
- ``torchrun_sigterm_resume``: ``torchrun --nproc_per_node 1`` (NCCL on CUDA), SIGTERM to the
  launcher mid-run, then the same command again, which must resume and finish;
- ``train_compile``: bf16 + channels_last + ``train.compile`` (last: the slowest to build).

Each result holds ``status`` (``pass``, ``fail`` or ``not run``), ``seconds``, ``numbers``, the
command, and for a failure the reason and the end of its log. The JSON is rewritten after every
check, so a run cut short still leaves the checks done so far. A time budget (``--budget``)
marks the checks it can no longer fit as not run.

``--cpu`` (or ``GPU_CHECK_MODE=cpu``): the same checks at tiny sizes on the CPU, in one process
where a verb allows it (importing torch once instead of a dozen times), gloo instead of NCCL,
``torch.compile`` with Dynamo's ``eager`` backend (graph capture without Inductor's code
generation, which takes minutes on a small CPU), the bench models replaced by small ones
(unet-r18 @ 16, segformer-b0 @ 32; FLOP utilisation in fp32 and bf16 only: no TF32 on a CPU,
and CPU float16 is emulated), and the torchrun check (other processes, mostly imports)
in a thread beside the rest. What truly needs CUDA (the ``cuda`` tests) is recorded as "not
run: no CUDA"; the speed-up criterion is not applied. The test suite runs this mode
(tests/test_gpu_check.py). ``--subprocess`` runs each verb in its own process, as on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
NO_CUDA = "not run: no CUDA"


@dataclass
class Sizes:
    """What one mode runs: the demo overrides, step counts and bench shapes."""

    name: str  # gpu | cpu
    train: list[str]  # overrides of the demo config for every training run
    steps: int
    torchrun_steps: int  # a run long enough to be stopped mid-way
    sigterm_after: int  # torchrun: SIGTERM once a logged step reaches this
    sliding: list[str]  # eval.mode=sliding window for the demo's images
    predict_sizes: list[tuple[int, int]]  # (H, W) of the images given to predict
    bench: list[tuple[str, int, int, int]]  # dual_teacher (model, crop, batch (+ as many), classes)
    bench_steps: tuple[int, int]  # (timed, warm-up)
    bench_amp: list[str]  # the AMP + channels_last overrides of the bench
    # FLOP utilisation: more bench variants, (name, arguments), timed over fewer steps...
    mfu_benches: list[tuple[str, list[str]]]
    mfu_bench_steps: tuple[int, int]  # (timed, warm-up)
    # ... and the table's rows: (precision, the bench variant that measures it, or None)
    mfu_rows: list[tuple[str, str | None]]
    fast: list[str]  # the overrides of train_channels_last (train_compile adds compile)
    min_miou: float | None  # final student mIoU a training run must reach (None: no floor)
    timeout: float  # seconds one subprocess check may run
    inprocess: bool  # run dualteacher verbs in this process (torch imported once)
    overlap: tuple[str, ...] = ()  # checks started at once in a thread, beside the others


GPU = Sizes(
    name="gpu",
    # the demo config as shipped (unet-effl0 from bundled weights, batch 8 + 8, crop 64), with
    # loader workers as a GPU run would use
    train=["train.log_every=10", "train.progress=false", "data.num_workers=4"],
    steps=200,
    torchrun_steps=200,
    sigterm_after=50,
    sliding=["eval.mode=sliding", "eval.crop_size=48", "eval.stride=32"],  # 2 x 2 windows
    predict_sizes=[(64, 64), (48, 80), (131, 97), (200, 300)],
    bench=[("deeplabv3plus-r101", 513, 8, 21), ("segformer-b1", 512, 8, 150)],
    bench_steps=(10, 3),
    bench_amp=["train.amp=bf16", "train.channels_last=true"],
    mfu_benches=[
        ("fp32", ["--tf32", "off", "train.channels_last=false"]),
        ("tf32", ["--tf32", "on", "train.channels_last=false"]),
        ("amp_fp16_cl", ["train.amp=fp16", "train.channels_last=true"]),
    ],
    mfu_bench_steps=(3, 2),
    mfu_rows=[("fp32", "fp32"), ("tf32", "tf32"), ("bf16", "amp_bf16_cl"), ("fp16", "amp_fp16_cl")],
    fast=["train.amp=bf16", "train.channels_last=true"],
    # 200 steps of the demo reach well above this (README: 33.5 after 200 steps at batch 4);
    # a model that predicts background everywhere scores about 15
    min_miou=20.0,
    timeout=240.0,
    inprocess=False,
)

# The plain layout for the baselines: train.channels_last is on by default since 2026-12-06.
CONTIGUOUS = ["train.channels_last=false"]

CPU = Sizes(
    name="cpu",
    train=[
        "train.device=cpu",  # also on a machine with a GPU
        "model.name=unet-r18",  # the demo's unet-effl0 is slow under CPU autocast
        "model.pretrained=null",
        "data.demo.num_labeled=8",
        "data.demo.num_unlabeled=16",
        "data.demo.num_val=4",
        "data.demo.image_size=32",
        "data.crop_size=16",  # half the cost of 32 (CPU bf16 without AVX512-BF16 is slow)
        "data.batch_size=2",
        "eval.batch_size=4",
        "train.log_every=1",
        "train.threads=1",
        "train.progress=false",
        "train.tensorboard=false",
        "train.curves=false",
    ],
    steps=2,
    torchrun_steps=12,
    sigterm_after=2,
    sliding=["eval.mode=sliding", "eval.crop_size=24", "eval.stride=16"],
    predict_sizes=[(32, 32), (24, 40), (45, 33)],
    bench=[("unet-r18", 16, 2, 21), ("segformer-b0", 32, 2, 150)],  # small stand-ins
    bench_steps=(1, 1),
    bench_amp=["train.amp=bf16", "train.channels_last=true"],
    mfu_benches=[],
    mfu_bench_steps=(1, 1),
    # amp_none is fp32 on a CPU (TF32 is CUDA's)
    mfu_rows=[("fp32", "amp_none"), ("tf32", None), ("bf16", "amp_bf16_cl"), ("fp16", None)],
    fast=["train.channels_last=true"],  # CPU autocast is slow; train_amp_bf16 covers bf16
    min_miou=None,  # 2 steps learn nothing
    timeout=120.0,
    inprocess=True,
    # two torchrun launches are mostly Python imports in other processes: on 2 cores they
    # overlap the in-process checks, which use one thread
    overlap=("torchrun_sigterm_resume",),
)


@dataclass
class Result:
    name: str
    status: str = NOT_RUN
    seconds: float = 0.0
    numbers: dict = field(default_factory=dict)
    reason: str = ""
    command: str = ""
    log_tail: str = ""


class CheckFailed(Exception):
    """A check's expectation was not met; the message is the reason."""


@dataclass
class Run:
    rc: int
    out: str  # stdout and stderr together
    seconds: float


# ------------------------------------------------------------------------------ running verbs
def _quote(argv: list[str]) -> str:
    return " ".join(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else repr(a) for a in argv)


def _subprocess(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> Run:
    """Run ``cmd`` in its own session (so a timeout also ends its loader workers)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            rc = 124
            f.write(f"\n[gpu_check] timed out after {timeout:.0f} s\n")
    return Run(rc, log.read_text(errors="replace"), time.perf_counter() - t0)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Verbs:
    """Runs ``dualteacher ARGV``: as ``python -m dualteacher`` (GPU: each check in a fresh
    process, so a CUDA fault or a compile cannot spoil the next) or in this process (CPU)."""

    def __init__(self, sizes: Sizes, logs: Path, deadline: float):
        self.sizes, self.logs, self.deadline = sizes, logs, deadline
        self.compile_backend: str | None = None  # CPU: torch.compile(backend="eager")

    def timeout(self, limit: float | None = None) -> float:
        return max(1.0, min(limit or self.sizes.timeout, self.deadline - time.monotonic()))

    def __call__(self, name: str, argv: list[str], result: Result) -> Run:
        result.command = "python -m dualteacher " + _quote(argv)
        log = self.logs / f"{name}.log"
        if not self.sizes.inprocess:
            cmd = [sys.executable, "-m", "dualteacher", *argv]
            return _subprocess(cmd, self.timeout(), log)
        t0 = time.perf_counter()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), self._compile():
            try:
                from dualteacher.cli import main

                main(argv)
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:  # a crash of one check must not stop the others
                traceback.print_exc()
                rc = 1
        log.write_text(buf.getvalue())
        return Run(rc, buf.getvalue(), time.perf_counter() - t0)

    @contextlib.contextmanager
    def _compile(self):
        if self.compile_backend is None:
            yield
            return
        import torch

        real = torch.compile

        def compile_with_backend(model=None, **kwargs):
            kwargs.setdefault("backend", self.compile_backend)
            return real(model, **kwargs) if model is not None else real(**kwargs)

        torch.compile = compile_with_backend
        try:
            yield
        finally:
            torch.compile = real


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _expect(ok: bool, reason: str) -> None:
    if not ok:
        raise CheckFailed(reason)


def _succeeded(run: Run, what: str) -> None:
    if run.rc == 124:
        raise CheckFailed(f"{what} timed out")
    lines = [ln for ln in run.out.splitlines() if ln.strip()]
    _expect(run.rc == 0, f"{what} exited with status {run.rc}: {lines[-1] if lines else ''}")


# ------------------------------------------------------------------------------- run outputs
def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written while we read
            rows.append(json.loads(line))
    return rows


def _train_numbers(run_dir: Path) -> dict:
    """Steps, final mIoU (student, teachers), training seconds and s/step from metrics.jsonl."""
    rows = _rows(run_dir)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "miou_student" in r]
    _expect(bool(train) and bool(val), f"{run_dir / 'metrics.jsonl'} has no training or val rows")
    last = train[-1]
    nums = {
        "steps": last["step"],
        "train_seconds": round(last["time"], 2),
        "first_logged_step_seconds": round(train[0]["time"], 2),  # includes compile, warm-up
        "bad_steps": last.get("bad_steps", 0),
        "final_loss": round(last["loss"], 4),
    }
    later = [r for r in train if r["step"] > train[0]["step"]]
    if later:  # after the first logged step: warm-up, cudnn autotuning and compile excluded
        nums["s_per_step"] = round(
            (later[-1]["time"] - train[0]["time"]) / (later[-1]["step"] - train[0]["step"]), 4
        )
    for key, value in val[-1].items():
        if key.startswith("miou_"):
            nums[key] = round(value, 2)
    return nums


def _miou(out: str) -> float:
    """The student's mIoU from ``dualteacher eval``'s table."""
    match = re.search(r"^mIoU\s+([-\d.naif]+)", out, re.M)
    _expect(match is not None, "no mIoU line in the eval output")
    return float(match.group(1))


def _last_json(out: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise CheckFailed("no JSON line in the bench output")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# --------------------------------------------------------------------------- FLOP utilisation
MFU_PHASES = ("teacher_fwd", "student_fwd", "backward")


def _sig(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else float(f"{x:.{digits}g}")


def flop_numbers(b: dict) -> dict:
    """The FLOP fields of a ``bench --json`` result ``b``, as a check keeps them."""
    peak = b["peak_flops_per_second"]
    used = b["utilisation"]
    return {
        "precision": b["precision"],
        "tf32": b["tf32"],
        "gpu": b["gpu"],
        "flops_per_step": _sig(b["flops_per_step"]),
        "flops_per_second": _sig(b["flops_per_second"]),
        "peak_matmul": _sig(peak["matmul"]),
        "peak_conv": _sig(peak["conv"]),
        "peak_measured": _sig(peak["measured"]),
        "peak_datasheet": _sig(peak["datasheet"]),
        "mfu": _sig(b["mfu"]),
        "mfu_datasheet": _sig(b["mfu_datasheet"]),
        "mfu_phases": {k: _sig(used[k]["mfu"]) for k in MFU_PHASES if k in used},
    }


def mfu_rows(sizes: Sizes, results: dict[str, Result]) -> list[dict]:
    """One row per bench model and precision of ``sizes.mfu_rows``: the FLOP numbers of the
    bench check that measured it, or why there are none (its status and reason)."""
    rows = []
    for model, crop, *_ in sizes.bench:
        for precision, variant in sizes.mfu_rows:
            row: dict = {"model": model, "crop": crop, "precision": precision}
            name = f"bench_{model}@{crop}_{variant}"
            result = results.get(name)
            if variant is None:
                row.update(status=NOT_RUN, reason=f"not run: no {precision} in {sizes.name} mode")
            elif result is None or result.status != PASS:
                row.update(status=result.status if result else NOT_RUN, check=name)
                row["reason"] = result.reason if result else "not run: not in the plan"
            else:
                n = result.numbers
                row.update(status=PASS, check=name, step_seconds=n["step_seconds"])
                row.update({k: v for k, v in n.items() if k in FLOP_KEYS})
            rows.append(row)
    return rows


FLOP_KEYS = ("flops_per_step", "flops_per_second", "peak_matmul", "peak_conv", "peak_measured",
             "peak_datasheet", "mfu", "mfu_datasheet", "mfu_phases", "gpu")  # fmt: skip


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def format_mfu_table(rows: list[dict]) -> str:
    """The FLOP utilisation table: per model and precision, FLOPs per step, achieved FLOP/s,
    the measured and datasheet peaks, MFU of each and MFU of the model phases (of the
    measured peak)."""
    head = (
        f"{'model':<24}{'prec':<6}{'FLOP/step':>12}{'FLOP/s':>14}{'peak (meas.)':>14}"
        f"{'peak (sheet)':>14}{'MFU meas.':>11}{'MFU sheet':>11}  MFU teacher_fwd / student_fwd / "
        "backward"
    )
    lines = ["FLOP utilisation (dualteacher bench, dual_teacher; MFU = achieved / peak)", head]
    for row in rows:
        label = f"{row['model']}@{row['crop']}"
        if row["status"] != PASS:
            why = row["reason"]  # "not run: ..." says its status; a failure's reason does not
            why = why if why.startswith(row["status"]) else f"{row['status']}: {why}"
            lines.append(f"{label:<24}{row['precision']:<6}  {why}")
            continue
        phases = " / ".join(_pct(row["mfu_phases"].get(k)) for k in MFU_PHASES)
        lines.append(
            f"{label:<24}{row['precision']:<6}{_si(row['flops_per_step'], 'FLOP'):>12}"
            f"{_si(row['flops_per_second'], 'FLOP/s'):>14}{_si(row['peak_measured'], 'FLOP/s'):>14}"
            f"{_si(row['peak_datasheet'], 'FLOP/s'):>14}{_pct(row['mfu']):>11}"
            f"{_pct(row['mfu_datasheet']):>11}  {phases}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ checks
class Checks:
    def __init__(self, sizes: Sizes, work: Path, verbs: Verbs, cuda: bool):
        self.sizes, self.work, self.verbs, self.cuda = sizes, work, verbs, cuda
        self.results: dict[str, Result] = {}

    def train_args(self, *extra: str, steps: int | None = None) -> list[str]:
        steps = steps or self.sizes.steps
        every = [f"train.steps={steps}", f"train.eval_every={steps}", f"train.ckpt_every={steps}"]
        return ["demo", *self.sizes.train, *every, *extra]

    def needs(self, name: str) -> Path:
        """The run directory of an earlier training check that passed."""
        if name not in self.results or self.results[name].status != PASS:
            raise CheckFailed(f"not run: needs {name}, which did not pass")
        return self.work / name

    # -- the checks (each fills result.numbers; raises CheckFailed on a failed expectation)
    def pytest_cuda(self, r: Result) -> None:
        if not self.cuda:
            raise CheckFailed(NO_CUDA)
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
        r.command = _quote([*cmd[2:], "tests"])
        limit = self.verbs.timeout(120)  # leaves the other checks their time
        run = _subprocess([*cmd, "tests"], limit, self.verbs.logs / "pytest.log")
        for count, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", run.out):
            r.numbers[what] = int(count)
        if run.rc == 5:
            raise CheckFailed("not run: no test is marked cuda")
        _succeeded(run, "pytest -m cuda")

    def train(self, r: Result, *extra: str) -> None:
        out = self.work / r.name
        run = self.verbs(r.name, ["train", *self.train_args(*extra), "--out", str(out)], r)
        _succeeded(run, "train")
        r.numbers.update(_train_numbers(out))
        r.numbers["wall_seconds"] = round(run.seconds, 1)
        n = r.numbers
        _expect(n["steps"] == self.sizes.steps, f"stopped at step {n['steps']}")
        _expect(n["bad_steps"] == 0, f"{n['bad_steps']} non-finite steps were skipped")
        _expect(_finite(n["final_loss"]) and _finite(n["miou_student"]), "non-finite metrics")
        floor = self.sizes.min_miou
        if floor is not None:
            _expect(n["miou_student"] >= floor, f"mIoU {n['miou_student']} < {floor}")

    def train_compile(self, r: Result) -> None:
        if not self.cuda:
            self.verbs.compile_backend = "eager"
            r.numbers["compile_backend"] = "eager (CPU mode)"
        try:
            self.train(r, *self.sizes.fast, "train.compile=true")
        finally:
            self.verbs.compile_backend = None

    def eval(self, r: Result, *extra: str) -> None:
        run_dir = self.needs("train_amp_none")
        run = self.verbs(r.name, ["eval", str(run_dir / "latest.pt"), *extra], r)
        _succeeded(run, "eval")
        miou = _miou(run.out)
        trained = self.results["train_amp_none"].numbers["miou_student"]
        r.numbers.update(miou=miou, training_final_miou=trained, seconds=round(run.seconds, 1))
        _expect(math.isfinite(miou), "non-finite mIoU")
        if "eval.mode=whole" in extra:  # the same evaluation as the run's final validation
            _expect(abs(miou - trained) <= 0.5, f"mIoU {miou} but the run's final was {trained}")

    def predict(self, r: Result) -> None:
        import numpy as np
        from PIL import Image

        run_dir = self.needs("train_amp_none")
        images = self.work / "predict_in"
        images.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i, (h, w) in enumerate(self.sizes.predict_sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"img{i}.{'jpg' if i % 2 else 'png'}")
        out = self.work / "predict_out"
        argv = ["predict", str(run_dir / "latest.pt"), str(images), "--out", str(out)]
        argv += [] if self.cuda else ["--device", "cpu"]
        run = self.verbs(r.name, argv, r)
        _succeeded(run, "predict")
        n = len(self.sizes.predict_sizes)
        for i, (h, w) in enumerate(self.sizes.predict_sizes):
            for suffix in ("", "_color", "_overlay"):
                _expect((out / f"img{i}{suffix}.png").is_file(), f"img{i}{suffix}.png missing")
            with Image.open(out / f"img{i}.png") as im:
                _expect(im.size == (w, h), f"img{i}.png is {im.size}, its input ({w}, {h})")
                _expect(im.mode == "P", f"img{i}.png has mode {im.mode}, not P")
        r.numbers.update(images=n, seconds=round(run.seconds, 1))

    def bench(
        self,
        r: Result,
        model: str,
        crop: int,
        batch: int,
        classes: int,
        extra: list[str],
        steps: tuple[int, int] | None = None,
    ) -> None:
        timed, warmup = steps or self.sizes.bench_steps
        argv = ["bench", "--model", model, "--crop", str(crop), "--batch", str(batch)]
        argv += ["--method", "dual_teacher", "--classes", str(classes), "--json"]
        argv += ["--steps", str(timed), "--warmup", str(warmup)]
        argv += ["--device", "cpu", "--threads", "1"] if not self.cuda else []
        run = self.verbs(r.name, argv + extra, r)
        _succeeded(run, "bench")
        b = _last_json(run.out)
        keep = ("model", "crop", "batch", "batch_u", "amp", "channels_last", "device")
        r.numbers.update({k: b[k] for k in keep if k in b})
        for k in ("images_per_second", "step_seconds", "step_seconds_median", "overhead_ratio"):
            r.numbers[k] = round(b[k], 4)
        r.numbers["peak_memory_mb"] = round(b["peak_memory_mb"], 1)
        _expect(_finite(b["images_per_second"]) and b["images_per_second"] > 0, "no images/s")
        r.numbers.update(flop_numbers(b))

    def flop_utilisation(self, r: Result) -> None:
        rows = mfu_rows(self.sizes, self.results)
        r.numbers["rows"] = rows
        measured = [row for row in rows if row["status"] == PASS]
        _expect(bool(measured), "not run: no bench result with FLOPs")
        for row in measured:
            what = f"{row['model']}@{row['crop']} {row['precision']}"
            _expect(row["flops_per_step"] > 0, f"{what}: no FLOPs counted")
            _expect(_finite(row["mfu"]) and row["mfu"] > 0, f"{what}: MFU {row['mfu']}")

    def bench_speedup(self, r: Result) -> None:
        for model, crop, *_ in self.sizes.bench:
            label = f"{model}@{crop}"
            plain = self.results.get(f"bench_{label}_amp_none")
            amp = self.results.get(f"bench_{label}_amp_bf16_cl")
            if plain and amp and plain.status == amp.status == PASS:
                ips = plain.numbers["images_per_second"], amp.numbers["images_per_second"]
                r.numbers[label] = round(ips[1] / ips[0], 3)
        _expect(bool(r.numbers), "not run: no pair of bench results")
        key = "{}@{}".format(*self.sizes.bench[0])
        if not self.cuda:
            r.numbers["criterion"] = "none on CPU (on CUDA: >= 1.5x for deeplabv3plus-r101@513)"
            return
        r.numbers["criterion"] = f">= 1.5x for {key}"
        _expect(key in r.numbers, f"no speed-up for {key}")
        _expect(r.numbers[key] >= 1.5, f"AMP + channels_last speed-up {r.numbers[key]} < 1.5")

    def torchrun_sigterm_resume(self, r: Result) -> None:
        out = self.work / r.name
        steps = self.sizes.torchrun_steps
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", "1", "-m", "dualteacher", "train"]
        cmd += [*self.train_args(steps=self.sizes.torchrun_steps), "--out", str(out)]
        r.command = "torchrun " + _quote(cmd[3:])
        r.numbers["backend"] = "nccl" if self.cuda else "gloo"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log1 = self.verbs.logs / f"{r.name}_1.log"
        with open(log1, "w") as f:
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
            )
            try:
                deadline = time.monotonic() + self.verbs.timeout() / 2
                while not any(x.get("step", 0) >= self.sizes.sigterm_after for x in _rows(out)):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise CheckFailed(
                            f"the first run ended (status {proc.returncode}) or timed out before "
                            f"step {self.sizes.sigterm_after}: {_tail(log1.read_text(), 300)}"
                        )
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)  # to the launcher, which forwards it
                r.numbers["launcher_status_after_sigterm"] = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    _kill(proc)
        first = log1.read_text(errors="replace")
        stopped = re.search(r"stopped by SIGTERM after step (\d+)", first)
        _expect(stopped is not None, "no 'stopped by SIGTERM after step N' from the worker")
        k = int(stopped.group(1))
        r.numbers["stopped_at"] = k
        _expect(0 < k < steps, f"stopped at step {k}, not within 1..{steps - 1}")
        run = _subprocess(cmd, self.verbs.timeout(), self.verbs.logs / f"{r.name}_2.log", env)
        _succeeded(run, "the resumed torchrun")
        resumed = re.search(r"resuming .* from step (\d+)", run.out)
        _expect(resumed is not None, "the second run did not resume")
        r.numbers["resumed_from"] = int(resumed.group(1))
        _expect(r.numbers["resumed_from"] == k, f"resumed from {resumed.group(1)}, stopped at {k}")
        nums = _train_numbers(out)
        r.numbers.update(final_step=nums["steps"], miou_student=nums["miou_student"])
        _expect(nums["steps"] == steps, f"the resumed run ended at step {nums['steps']}")

    def plan(self) -> list[tuple[str, Callable[[Result], None]]]:
        plan: list[tuple[str, Callable[[Result], None]]] = [
            ("pytest_cuda", self.pytest_cuda),
            # contiguous layout (channels_last is the default): train_channels_last adds it
            ("train_amp_none", lambda r: self.train(r, "train.amp=none", *CONTIGUOUS)),
            ("eval_whole", lambda r: self.eval(r, "eval.mode=whole")),
            ("eval_sliding", lambda r: self.eval(r, *self.sizes.sliding)),
            ("predict", self.predict),
        ]
        for model, crop, batch, classes in self.sizes.bench:
            for variant, extra in (("amp_none", CONTIGUOUS), ("amp_bf16_cl", self.sizes.bench_amp)):
                args = (model, crop, batch, classes, extra)
                plan.append(
                    (f"bench_{model}@{crop}_{variant}", lambda r, a=args: self.bench(r, *a))
                )
        plan.append(("bench_speedup", self.bench_speedup))
        for model, crop, batch, classes in self.sizes.bench:
            for variant, extra in self.sizes.mfu_benches:
                args = (model, crop, batch, classes, extra, self.sizes.mfu_bench_steps)
                plan.append(
                    (f"bench_{model}@{crop}_{variant}", lambda r, a=args: self.bench(r, *a))
                )
        plan += [
            ("flop_utilisation", self.flop_utilisation),
            ("train_amp_bf16", lambda r: self.train(r, "train.amp=bf16", *CONTIGUOUS)),
            ("train_amp_fp16", lambda r: self.train(r, "train.amp=fp16", *CONTIGUOUS)),
            ("train_channels_last", lambda r: self.train(r, *self.sizes.fast)),
            ("torchrun_sigterm_resume", self.torchrun_sigterm_resume),
            ("train_compile", self.train_compile),
        ]
        return plan


# ------------------------------------------------------------------------------------ report
def host_info(cuda: bool) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpus": os.cpu_count(),
    }
    for pkg in ("dualteacher", "segmentation_models_pytorch", "timm", "omegaconf", "torchvision"):
        with contextlib.suppress(Exception):
            info[pkg] = __import__(pkg).__version__
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16=torch.cuda.is_bf16_supported(),
            visible_gpus=torch.cuda.device_count(),
        )
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return info


def _short(numbers: dict) -> str:
    keys = ("miou_student", "miou", "s_per_step", "images_per_second", "peak_memory_mb", "mfu",
            "stopped_at", "resumed_from", "passed", "failed", "skipped")  # fmt: skip
    shown = [f"{k}={numbers[k]}" for k in keys if k in numbers]
    shown += [f"{k}={v}x" for k, v in numbers.items() if "@" in k]
    return " ".join(shown)


def format_table(report: dict) -> str:
    lines = [f"{'check':<44}{'status':<9}{'seconds':>8}  numbers / reason"]
    for c in report["checks"]:
        status = c["status"]
        text = c["reason"] if status != PASS else _short(c["numbers"])
        lines.append(f"{c['name']:<44}{status:<9}{c['seconds']:>8.1f}  {text}")
    s = report["summary"]
    lines.append(
        f"{s['pass']} passed, {s['fail']} failed, {s['not_run']} not run in "
        f"{report['seconds']:.0f} s ({report['mode']} mode)"
    )
    return "\n".join(lines)


def write_report(path: Path, report: dict, results: list[Result]) -> None:
    report["checks"] = [r.__dict__ for r in results]
    report["summary"] = {
        "pass": sum(r.status == PASS for r in results),
        "fail": sum(r.status == FAIL for r in results),
        "not_run": sum(r.status == NOT_RUN for r in results),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def run_check(r: Result, fn: Callable[[Result], None], checks: Checks) -> None:
    """Run one check into ``r``: pass, fail (with the reason and its log's end) or not run."""
    start = time.perf_counter()
    try:
        fn(r)
        r.status = PASS
    except CheckFailed as e:
        r.reason = str(e)
        r.status = NOT_RUN if r.reason.startswith("not run") else FAIL
    except Exception as e:  # a bug in this script must not lose the other checks
        r.status, r.reason = FAIL, f"{type(e).__name__}: {e}"
        r.log_tail = _tail(traceback.format_exc())
    r.seconds = round(time.perf_counter() - start, 1)
    if r.status == FAIL and not r.log_tail:
        logs = sorted(checks.verbs.logs.glob(f"{r.name}*.log"))
        r.log_tail = _tail(logs[-1].read_text(errors="replace")) if logs else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny CPU mode (also GPU_CHECK_MODE=cpu)")
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None
    p.add_argument("--out", type=Path, default=default_out, help="JSON file ($OUT/gpu_check.json)")
    p.add_argument("--work", type=Path, help="folder for runs and logs (default: a new temp dir)")
    p.add_argument("--budget", type=float, help="seconds for all checks (GPU 450, CPU 300)")
    p.add_argument(
        "--subprocess", action="store_true", help="CPU mode: one process per verb, as on a GPU"
    )
    p.add_argument("--only", help="comma-separated check names (the others: not run)")
    args = p.parse_args(argv)
    cpu = args.cpu or os.environ.get("GPU_CHECK_MODE", "").lower() == "cpu"
    if args.out is None:
        p.error("give --out FILE (or set $OUT)")
    t0 = time.monotonic()
    import torch

    cuda = torch.cuda.is_available() and not cpu
    if not cpu and not cuda:
        print("gpu_check: no CUDA device; run with --cpu for the tiny CPU mode", file=sys.stderr)
        return 2
    sizes = CPU if cpu else GPU
    if args.subprocess:
        sizes = dataclasses.replace(sizes, inprocess=False, overlap=())
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (300.0 if cpu else 450.0)
    verbs = Verbs(sizes, work / "logs", t0 + budget)
    checks = Checks(sizes, work, verbs, cuda)
    report = {"mode": sizes.name, "host": host_info(cuda), "work": str(work), "seconds": 0.0}
    report["budget_seconds"] = budget
    only = set(args.only.split(",")) if args.only else None
    plan = checks.plan()
    results = [Result(name) for name, _ in plan]
    checks.results = {r.name: r for r in results}
    started = {
        r.name: threading.Thread(target=run_check, args=(r, fn, checks), daemon=True)
        for r, (_, fn) in zip(results, plan)
        if r.name in sizes.overlap and (only is None or r.name in only) and budget >= 5
    }
    for thread in started.values():
        thread.start()
    for r, (name, fn) in zip(results, plan):
        if name in started:
            started[name].join()
        elif only is not None and name not in only:
            r.reason = "not run: not in --only"
        elif t0 + budget - time.monotonic() < 5:
            r.reason = f"not run: the time budget ({budget:.0f} s) is used up"
        else:
            run_check(r, fn, checks)
        print(f"[gpu_check] {name}: {r.status} {r.reason}".rstrip(), flush=True)
        report["seconds"] = round(time.monotonic() - t0, 1)
        write_report(args.out, report, results)
    print(format_table(report))
    flop = next((c for c in report["checks"] if c["name"] == "flop_utilisation"), None)
    if flop is not None and flop["numbers"].get("rows"):
        print(format_mfu_table(flop["numbers"]["rows"]))
    print(f"results: {args.out}")
    return 1 if report["summary"]["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
