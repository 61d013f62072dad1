"""Training-step benchmark on synthetic data: ``dualteacher bench``.

``bench(cfg)`` builds the training run of ``cfg`` exactly as ``train`` does (the same
``engine.run.build_training``: method, optimizer, schedule, prepared method, step runner), feeds
it random images and masks at ``cfg.data.crop_size`` / ``cfg.data.batch_size`` (no dataset
needed; ``real_data`` reads the configured dataset through the training loaders) and times the
training step itself (``engine.step.StepRunner``: ``training_step`` under ``train.amp``,
backward, the non-finite check, optimizer and scheduler step, ``after_step``). The epoch is 1
step here, so Dual Teacher alternates teacher A (CutMix branch) and teacher B (ClassMix branch)
from one step to the next and the mean covers both.

Each timed step is broken down by the ``phase`` blocks of the engine and the methods (data
wait, teacher forwards, mixing, student forwards, backward, optimizer, EMA) and compared with
its model passes replayed alone (``time_model_passes``), through the same callables the step
used (with ``train.compile``, the student's compiled training forward): ``overhead_ratio`` =
step time / time of the passes, 1.0 when everything but the networks is free.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from dualteacher.config import IGNORE_INDEX, Config
from dualteacher.data.base import strong_key
from dualteacher.device import backend_settings
from dualteacher.engine.distributed import autocast, synchronize
from dualteacher.engine.run import build_training
from dualteacher.errors import ConfigError
from dualteacher.methods import Method, StepInfo
from dualteacher.methods.base import Batch, PhaseTimer, timing


def synthetic_batches(
    cfg: Config, num_classes: int, device: torch.device, method: Method
) -> tuple[Batch, Batch | None]:
    """Random normalised images ``(B, 3, C, C)`` and masks ``(B, C, C)`` (5 % ignore), plus an
    unlabelled batch with the views ``method`` needs."""
    c, b = cfg.data.crop_size, cfg.data.batch_size
    mask = torch.randint(0, num_classes, (b, c, c), device=device)
    mask[torch.rand(b, c, c, device=device) < 0.05] = IGNORE_INDEX
    batch_x = {"image": torch.randn(b, 3, c, c, device=device), "mask": mask}
    if not method.uses_unlabeled:
        return batch_x, None
    b_u = cfg.data.batch_size_u or b
    batch_u = {
        "image": torch.randn(b_u, 3, c, c, device=device),
        "ignore": torch.zeros(b_u, c, c, dtype=torch.bool, device=device),
    }
    for i in range(method.num_strong_views if method.needs_strong_view else 0):
        batch_u[strong_key(i)] = torch.randn(b_u, 3, c, c, device=device)
    return batch_x, batch_u


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss: kilobytes on Linux, bytes on macOS; the peak of the whole process so far.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


# Phases of one step, in the order they run (``sync`` only under DDP, so never here);
# ``other`` is the rest of the step: losses, pseudo-label post-processing, Python.
PHASES = ("data", "teacher_fwd", "mixing", "student_fwd", "backward", "optimizer", "ema")
MODEL_PHASES = ("teacher_fwd", "student_fwd", "backward")  # the networks' share of a step


@dataclass
class ModelPass:
    """One forward of a student or teacher inside a step, as recorded by ``PassRecorder``."""

    model: nn.Module
    shape: tuple[int, ...]  # input (B, 3, H, W)
    kwargs: dict
    training: bool  # train or eval mode
    grad: bool  # part of the backward (student passes) or not (pseudo-labels)
    call: Callable  # what the step called: the module, or the student's DDP / compiled wrapper


class PassRecorder:
    """Records every model forward of ``method``'s steps while ``active``: the student's
    gradient passes where ``student_forward`` hands them to its (DDP / compiled) callable, every
    other pass (teachers, the student without gradient: eager modules) by a forward pre-hook.
    ``remove()`` undoes both."""

    def __init__(self, method: Method):
        self.passes: list[ModelPass] = []
        self.active = False
        self._method, self._inner = method, method._student_call
        self._in_student_call = False
        models = list({id(m): m for m in method.eval_models().values()}.values())
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in models]
        method.wrap_student(self._student_call)

    def _student_call(self, x: torch.Tensor, **kwargs):
        student = self._method.student
        if self.active:
            grad = torch.is_grad_enabled()
            self.passes.append(
                ModelPass(student, tuple(x.shape), kwargs, student.training, grad, self._inner)
            )
        self._in_student_call = True
        try:
            return self._inner(x, **kwargs)
        finally:
            self._in_student_call = False

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Inside a compiled forward the hook is traced, not run: nothing to record there, and
        # nothing read that the compiled code would guard on (checked first).
        if torch.compiler.is_compiling() or not self.active or self._in_student_call:
            return
        grad = torch.is_grad_enabled()
        self.passes.append(
            ModelPass(module, tuple(args[0].shape), kwargs, module.training, grad, module)
        )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self._method.wrap_student(self._inner)


def time_model_passes(passes: list[ModelPass], device: torch.device, cfg: Config) -> float:
    """Seconds to run ``passes`` alone on random inputs of the recorded shapes, in their
    recorded modes, through the callables the step used: the forwards without gradient, and
    the gradient forwards followed by one backward through all of them (as the step does). No
    data, mixing, loss or optimizer."""
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    inputs = [torch.randn(p.shape, device=device).contiguous(memory_format=fmt) for p in passes]
    synchronize(device)
    t0 = time.perf_counter()
    outputs = []
    with autocast(device, cfg.train.amp):
        for p, x in zip(passes, inputs):
            was_training = p.model.training
            p.model.train(p.training)
            with torch.set_grad_enabled(p.grad):
                out = p.call(x, **p.kwargs)
            p.model.train(was_training)
            if p.grad:
                outputs += list(out) if isinstance(out, tuple) else [out]
    if outputs:
        sum(o.float().mean() for o in outputs).backward()
    synchronize(device)
    return time.perf_counter() - t0


def _synthetic_iterators(cfg: Config, num_classes: int, method: Method):
    """Endless iterators over two pre-made CPU batches (labelled, unlabelled or None)."""
    cpu = torch.device("cpu")
    pairs = [synthetic_batches(cfg, num_classes, cpu, method) for _ in range(2)]
    it_u = itertools.cycle([u for _, u in pairs]) if method.uses_unlabeled else None
    return itertools.cycle([x for x, _ in pairs]), it_u


def bench(
    cfg: Config, steps: int = 3, warmup: int = 1, num_classes: int = 21, real_data: bool = False
) -> dict:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) of ``cfg``'s method and
    model, on synthetic data or, with ``real_data``, on the loaders of ``cfg.data``.

    Returns:
        ``step_seconds`` (mean), ``step_seconds_median``, ``step_times``, ``images_per_second``
        (labelled + unlabelled images per second), ``peak_memory_mb`` and ``peak_memory_kind``
        (``cuda_max_allocated``, or ``process_max_rss`` on the CPU: the process's peak
        resident memory, model building included); ``phases``: mean seconds per step of each
        of ``PHASES`` and ``other``; ``model_passes_seconds``: the step's student and teacher
        passes timed alone (``time_model_passes``), and ``overhead_ratio``: step time over
        it; ``model_phase_ratio``: step time over its own ``MODEL_PHASES`` (the same
        quantity from the same steps, less sensitive to a CPU shared with other jobs); plus
        the settings measured.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps}, {warmup}")
    t0 = time.perf_counter()
    with backend_settings(cfg.train):  # cuDNN autotuning as in training
        run = build_training(cfg, num_classes=None if real_data else num_classes, verbose=False)
        method, device = run.method, run.device
        num_classes = len(run.state.classes)
        if real_data:
            it_x, it_u = (iter(loader) if loader is not None else None for loader in run.batches())
        else:
            it_x, it_u = _synthetic_iterators(cfg, num_classes, method)
        build_seconds = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        recorder = PassRecorder(method)
        times, pass_times, phases = [], [], []
        for step in range(warmup + steps):
            info = StepInfo(step, epoch_steps=1)
            timer = PhaseTimer(device)
            recorder.passes.clear()
            recorder.active = True
            synchronize(device)
            start = time.perf_counter()
            with timing(timer):
                out = run.step(it_x, it_u, info)
            synchronize(device)
            elapsed = time.perf_counter() - start
            recorder.active = False
            if step >= warmup:
                times.append(elapsed)
                phases.append(dict(timer.seconds))
                pass_times.append(time_model_passes(recorder.passes, device, cfg))
        recorder.remove()
    peak_mb, peak_kind = _peak_memory_mb(device)
    mean = statistics.fmean(times)
    phase_means = {k: statistics.fmean(p.get(k, 0.0) for p in phases) for k in PHASES}
    phase_means["other"] = mean - sum(phase_means.values())
    batch_u = (cfg.data.batch_size_u or cfg.data.batch_size) if method.uses_unlabeled else 0
    images = (cfg.data.batch_size + batch_u) * cfg.train.accum_steps
    passes = statistics.fmean(pass_times)
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "crop": cfg.data.crop_size,
        "batch": cfg.data.batch_size,
        "batch_u": batch_u,
        "classes": num_classes,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": cfg.train.amp.value,
        "channels_last": cfg.train.channels_last,
        "accum_steps": cfg.train.accum_steps,
        "data": "real" if real_data else "synthetic",
        "compile": cfg.train.compile,
        "params_m": sum(p.numel() for p in method.student.parameters()) / 1e6,
        "warmup": warmup,
        "steps": steps,
        "step_seconds": mean,
        "step_seconds_median": statistics.median(times),
        "step_times": times,
        "images_per_second": images * len(times) / sum(times),
        "phases": phase_means,
        "model_passes_seconds": passes,
        "overhead_ratio": mean / passes,
        "model_phase_ratio": mean / sum(phase_means[k] for k in MODEL_PHASES),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "build_seconds": build_seconds,
        "loss": float(out["loss"].detach()),
    }


def format_bench(r: dict) -> str:
    """Human-readable lines of a ``bench`` result."""
    memory = {"cuda_max_allocated": "CUDA max allocated", "process_max_rss": "process max RSS"}
    step = r["step_seconds"]
    phases = [
        f"    {name:<12} {sec * 1000:9.1f} ms  {100 * sec / step:5.1f} %"
        for name, sec in r["phases"].items()
    ]
    return "\n".join(
        [
            f"bench {r['method']} / {r['model']} ({r['params_m']:.1f} M params): crop "
            f"{r['crop']}, batch {r['batch']}"
            + (f" + {r['batch_u']} unlabelled" if r["batch_u"] else "")
            + f", {r['classes']} classes, {r['device']} ({r['threads']} threads)",
            f"  step time    mean {r['step_seconds']:.3f} s, median "
            f"{r['step_seconds_median']:.3f} s ({r['steps']} steps after {r['warmup']} warm-up)",
            f"  throughput   {r['images_per_second']:.2f} images/s (labelled + unlabelled)",
            f"  peak memory  {r['peak_memory_mb']:.0f} MB ({memory[r['peak_memory_kind']]})",
            f"  settings     amp {r['amp']}, channels_last {r['channels_last']}, accumulation "
            f"{r['accum_steps']}, {r['data']} data",
            "  phases (mean per step):",
            *phases,
            f"  model passes alone {r['model_passes_seconds'] * 1000:.1f} ms; step / passes = "
            f"{r['overhead_ratio']:.3f}; step / its model phases = {r['model_phase_ratio']:.3f}",
        ]
    )
