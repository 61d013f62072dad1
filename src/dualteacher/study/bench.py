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

FLOPs and utilisation. One more step (two for a two-teacher method: both branches), untimed,
after the timed ones, runs under ``torch.utils.flop_counter.FlopCounterMode``: every matrix
product and convolution of the model passes, forward and backward, charged to the ``phase``
that ran it (``count_step_flops``). Achieved FLOP/s = FLOPs / the timed seconds, per phase and
for the whole step; the machine's peak is measured in the same process by a matrix-product and
a convolution probe in the step's precision and thread count (``measure_peak``; the larger of
the two is the peak), and on CUDA also looked up in the card's datasheet (``DATASHEET_TFLOPS``).
Model FLOP utilisation (MFU) = achieved FLOP/s / peak.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from dualteacher.config import IGNORE_INDEX, AmpMode, Config
from dualteacher.data.base import strong_key
from dualteacher.device import backend_settings, select_device
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
    channels_last: bool  # its memory layout as the step had it: NHWC (True) or NCHW
    kwargs: dict
    training: bool  # train or eval mode
    grad: bool  # part of the backward (student passes) or not (pseudo-labels)
    call: Callable  # what the step called: the module, or the student's DDP / compiled wrapper


def _nhwc(x: torch.Tensor) -> bool:
    """Whether ``x`` (B, C, H, W) is laid out channels-last (and not also plain contiguous, as a
    1x1 image or one channel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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
                ModelPass(
                    student, tuple(x.shape), _nhwc(x), kwargs, student.training, grad, self._inner
                )
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
            ModelPass(
                module,
                tuple(args[0].shape),
                args[0].stride(),
                kwargs,
                module.training,
                grad,
                module,
            )
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
    # Each input in the layout the step gave it (a compiled student guards on strides: another
    # layout would recompile it; a concatenation or a mix may turn NHWC into NCHW).
    formats = [torch.channels_last if p.channels_last else torch.contiguous_format for p in passes]
    inputs = [
        torch.randn(p.shape, device=device).contiguous(memory_format=f)
        for p, f in zip(passes, formats)
    ]
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


# ------------------------------------------------------------------- FLOPs and utilisation
FLOP_STEPS = 2  # untimed steps counted: Dual Teacher alternates its two branches step by step


class PhaseFlops(PhaseTimer):
    """FLOPs per ``phase`` of the code run inside ``timing(this)``, read from ``counter`` (a
    ``FlopCounterMode`` active around it): a phase is charged what the counter counted between
    its start and its end. As with ``PhaseTimer``, a phase opened inside another is charged to
    the outer one."""

    def __init__(self, counter: FlopCounterMode):
        super().__init__("cpu")
        self.counter = counter
        self.flops: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open:
            yield
            return
        self._open, before = True, self.counter.get_total_flops()
        try:
            yield
        finally:
            self.flops[name] += self.counter.get_total_flops() - before
            self._open = False


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape=None,
) -> int:  # fmt: skip
    """FLOPs of ``aten.convolution_backward``: each gradient asked for (``output_mask``: input,
    weight) costs what the forward convolution does. PyTorch's own formula counts the weight
    gradient of a grouped convolution as if it were dense, ``groups`` times too many: for the
    depthwise convolutions of EfficientNet (unet-effl0) that made the backward 15x its forward.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# Our formulas for the ops whose PyTorch formula is wrong (FlopCounterMode's custom_mapping).
FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


def count_step_flops(step: Callable[[], object]) -> dict[str, int]:
    """FLOPs of one call of ``step``: ``{phase: FLOPs}`` for ``PHASES``, ``"other"`` (outside
    every phase) and ``"step"`` (the total). Counted by ``torch.utils.flop_counter``: matrix
    products, convolutions and attention, forward and backward, 2 FLOPs per multiply-add;
    element-wise work, normalisation, pooling, resizing and losses are not counted (the usual
    convention of model FLOP utilisation)."""
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        phases = PhaseFlops(counter)
        with timing(phases):
            step()
    total = counter.get_total_flops()
    flops = {name: phases.flops.get(name, 0) for name in PHASES}
    flops["other"] = total - sum(flops.values())  # in no phase, or one not in PHASES ("sync")
    flops["step"] = total
    return flops


@contextlib.contextmanager
def eager_student(method: Method) -> Iterator[None]:
    """The student's gradient passes through the module itself inside the block, not through
    a ``torch.compile`` wrapper: the FLOP counter sees the operators of an eager forward and
    backward (the model's arithmetic, whatever kernels a compiled graph fuses it into)."""
    call = method._student_call
    method.wrap_student(method.student)
    try:
        yield
    finally:
        method.wrap_student(call)


def compute_precision(device: torch.device, amp: AmpMode) -> str:
    """What the step's matrix products and convolutions run in: ``bf16`` / ``fp16`` under
    autocast; otherwise ``tf32`` on CUDA when TF32 is allowed for matrix products or for cuDNN
    convolutions (torch's default allows it for convolutions only), else ``fp32``."""
    if amp != AmpMode.none:
        return amp.value
    tf32 = tf32_state(device)
    return "tf32" if tf32 is not None and (tf32["matmul"] or tf32["conv"]) else "fp32"


def tf32_state(device: torch.device) -> dict[str, bool] | None:
    """Whether float32 matrix products and cuDNN convolutions may use TF32 (CUDA; None on other
    devices, which have no TF32 here)."""
    if device.type != "cuda":
        return None
    matmul = torch.get_float32_matmul_precision() != "highest"
    return {"matmul": matmul, "conv": bool(torch.backends.cudnn.allow_tf32)}


@contextlib.contextmanager
def tf32_settings(enabled: bool | None) -> Iterator[None]:
    """TF32 for float32 matrix products and cuDNN convolutions on (True) or off (False) inside
    the block, torch's settings as they were after it; None: left as they are."""
    if enabled is None:
        yield
        return
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


# Dense peak TFLOP/s (no 2:4 structured sparsity) of NVIDIA data-centre GPUs, from NVIDIA's
# datasheets; where a datasheet gives a Tensor Core figure "with sparsity" only, it is halved
# (the datasheets' footnote: dense is half of it).
# - H100 (nvidia.com/en-us/data-center/h100, "NVIDIA H100 Tensor Core GPU" datasheet): SXM
#   FP32 67, TF32 989*, BF16 1,979*, FP16 1,979*; NVL FP32 60, TF32 835*, BF16/FP16 1,671*;
#   PCIe (the 2022 datasheet) FP32 51, TF32 756*, BF16/FP16 1,513*.
# - H200 (nvidia.com/en-us/data-center/h200, "NVIDIA H200 Tensor Core GPU" datasheet): SXM as
#   H100 SXM; NVL as H100 NVL.
# - A100 ("NVIDIA A100 Tensor Core GPU" datasheet, PCIe and SXM alike): FP32 19.5, TF32 156,
#   BF16/FP16 312.
# - L40S ("NVIDIA L40S" datasheet): FP32 91.6, TF32 183, BF16/FP16 362.05.
# - L4 ("NVIDIA L4 Tensor Core GPU" datasheet): FP32 30.3, TF32 120*, BF16/FP16 242*.
# - A10 ("NVIDIA A10 Tensor Core GPU" datasheet): FP32 31.2, TF32 62.5, BF16/FP16 125.
# (* with sparsity.) The first pattern that matches torch.cuda.get_device_name() applies.
_SXM = {"fp32": 67.0, "tf32": 989 / 2, "bf16": 1979 / 2, "fp16": 1979 / 2}
_NVL = {"fp32": 60.0, "tf32": 835 / 2, "bf16": 1671 / 2, "fp16": 1671 / 2}
DATASHEET_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"\bH100\b.*\bPCIe\b", {"fp32": 51.0, "tf32": 756 / 2, "bf16": 1513 / 2, "fp16": 1513 / 2}),
    (r"\bH100\b.*\bNVL\b", _NVL),
    (r"\bH100\b", _SXM),  # "NVIDIA H100 80GB HBM3": the SXM5 card
    (r"\bH200\b.*\bNVL\b", _NVL),
    (r"\bH200\b", _SXM),
    (r"\bA100\b", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (r"\bL40S\b", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 120 / 2, "bf16": 242 / 2, "fp16": 242 / 2}),
    (r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
]


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak FLOP/s of the GPU named ``device_name`` in ``precision``
    (``fp32``, ``tf32``, ``bf16``, ``fp16``); None for a GPU not in ``DATASHEET_TFLOPS``."""
    for pattern, tflops in DATASHEET_TFLOPS:
        if re.search(pattern, device_name):
            return tflops[precision] * 1e12
    return None


PROBE_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                "fp16": torch.float16}  # fmt: skip


def _best_flops_per_second(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """FLOP/s of ``fn``: its FLOPs counted once (which also warms it up: cuDNN autotuning,
    oneDNN's primitive cache), then the fastest of ``reps`` timings of a few calls each."""
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        fn()
    flops = counter.get_total_flops()
    calls = 5 if device.type == "cuda" else 1  # a GPU call of ~1 ms is short to time alone
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / calls)
    return flops / best


def measure_peak(
    device: torch.device, precision: str, channels_last: bool, reps: int = 3
) -> dict[str, float]:
    """This machine's FLOP/s in ``precision`` with this process's threads and TF32 settings:
    ``matmul`` (a square matrix product) and ``conv`` (a 3x3 convolution, ``channels_last`` as
    the step's), and ``measured``, the larger of the two: the ceiling the step is held to."""
    dtype = PROBE_DTYPES[precision]
    cuda = device.type == "cuda"
    # Large enough to run near the machine's peak, small enough to take well under a second:
    # (n, n) @ (n, n), and (N, C, S, S) * (C, C, 3, 3), a ResNet middle stage.
    n = 8192 if cuda else 512
    batch, c, side = (32, 256, 56) if cuda else (4, 64, 28)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, c, side, side, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        rates = {
            "matmul": _best_flops_per_second(lambda: a @ b, device, reps),
            "conv": _best_flops_per_second(lambda: F.conv2d(x, w, padding=1), device, reps),
        }
    return {**rates, "measured": max(rates.values())}


def utilisation(
    flops: dict[str, float], seconds: dict[str, float], peak: float, datasheet: float | None
) -> dict[str, dict]:
    """Per key of ``flops`` that has FLOPs and time: achieved FLOP/s (``flops / seconds``),
    ``mfu``, its fraction of the measured ``peak``, and ``mfu_datasheet``, its fraction of the
    ``datasheet`` peak (None without one)."""
    out = {}
    for name, n in flops.items():
        sec = seconds.get(name, 0.0)
        if n > 0 and sec > 0:
            rate = n / sec
            out[name] = {
                "flops_per_second": rate,
                "mfu": rate / peak,
                "mfu_datasheet": rate / datasheet if datasheet else None,
            }
    return out


def _synthetic_iterators(cfg: Config, num_classes: int, method: Method):
    """Endless iterators over two pre-made CPU batches (labelled, unlabelled or None)."""
    cpu = torch.device("cpu")
    pairs = [synthetic_batches(cfg, num_classes, cpu, method) for _ in range(2)]
    it_u = itertools.cycle([u for _, u in pairs]) if method.uses_unlabeled else None
    return itertools.cycle([x for x, _ in pairs]), it_u


def bench(
    cfg: Config,
    steps: int = 3,
    warmup: int = 1,
    num_classes: int = 21,
    real_data: bool = False,
    tf32: bool | None = None,
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

        FLOPs, counted by ``count_step_flops`` in ``FLOP_STEPS`` untimed steps after the timed
        ones (the student eager): ``flops``, mean per step, by phase and for the ``step``
        (also ``flops_per_step``); ``precision`` (``fp32``, ``tf32``, ``bf16``, ``fp16``) and
        ``tf32`` (CUDA: allowed for matrix products, for convolutions); ``gpu``: the card's
        name; ``peak_flops_per_second``: ``matmul``, ``conv`` and ``measured`` (the larger)
        from ``measure_peak``, ``datasheet`` (a known CUDA card, else None); ``utilisation``:
        for every phase with FLOPs and for the ``step``, achieved ``flops_per_second``,
        ``mfu`` (of the measured peak) and ``mfu_datasheet``; the step's also at the top as
        ``flops_per_second``, ``mfu`` and ``mfu_datasheet``.

    ``tf32``: TF32 on or off for float32 matrix products and cuDNN convolutions (CUDA only);
    None keeps torch's settings (by default: off for matrix products, on for convolutions).
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps}, {warmup}")
    if tf32 is not None and select_device(cfg.train.device).type != "cuda":
        raise ConfigError(
            f"--tf32 sets TF32 for CUDA matrix products and convolutions; train.device="
            f"{cfg.train.device} runs on the CPU"
        )
    t0 = time.perf_counter()
    # cuDNN autotuning as in training; TF32 as asked
    with backend_settings(cfg.train), tf32_settings(tf32):
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
        peak_mb, peak_kind = _peak_memory_mb(device)  # of the timed steps, not what follows
        # Untimed: the FLOPs of the steps just timed (their step numbers, so both branches of
        # a two-teacher method), then the machine's peak in the same precision and threads.
        with eager_student(method):
            counted = [
                count_step_flops(lambda s=s: run.step(it_x, it_u, StepInfo(s, epoch_steps=1)))
                for s in range(warmup, warmup + min(steps, FLOP_STEPS))
            ]
        precision = compute_precision(device, cfg.train.amp)
        tf32_now = tf32_state(device)
        peak = measure_peak(device, precision, cfg.train.channels_last)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak["datasheet"] = datasheet_peak(gpu, precision) if gpu else None
    mean = statistics.fmean(times)
    phase_means = {k: statistics.fmean(p.get(k, 0.0) for p in phases) for k in PHASES}
    phase_means["other"] = mean - sum(phase_means.values())
    batch_u = (cfg.data.batch_size_u or cfg.data.batch_size) if method.uses_unlabeled else 0
    images = (cfg.data.batch_size + batch_u) * cfg.train.accum_steps
    passes = statistics.fmean(pass_times)
    flops = {k: statistics.fmean(c[k] for c in counted) for k in counted[0]}
    used = utilisation(flops, {**phase_means, "step": mean}, peak["measured"], peak["datasheet"])
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
        "precision": precision,
        "tf32": tf32_now,
        "gpu": gpu,
        "flops_counted_steps": len(counted),
        "flops": flops,
        "flops_per_step": flops["step"],
        "peak_flops_per_second": peak,
        "utilisation": used,
        "flops_per_second": used.get("step", {}).get("flops_per_second", 0.0),
        "mfu": used.get("step", {}).get("mfu", 0.0),
        "mfu_datasheet": used.get("step", {}).get("mfu_datasheet"),
    }


def _si(x: float, unit: str) -> str:
    """``1.23e12, "FLOP/s"`` -> ``1.23 TFLOP/s``."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def format_bench(r: dict) -> str:
    """Human-readable lines of a ``bench`` result."""
    memory = {"cuda_max_allocated": "CUDA max allocated", "process_max_rss": "process max RSS"}
    step = r["step_seconds"]
    used = r["utilisation"]
    phases = []
    for name, sec in r["phases"].items():
        line = f"    {name:<12} {sec * 1000:9.1f} ms  {100 * sec / step:5.1f} %"
        if name in used:  # a phase that runs model passes: its FLOPs and utilisation
            u = used[name]
            line += (
                f"  {_si(r['flops'][name], 'FLOP'):>11}  {_si(u['flops_per_second'], 'FLOP/s'):>13}"
                f"  MFU {_pct(u['mfu'])}"
            )
        phases.append(line)
    peak = r["peak_flops_per_second"]
    datasheet = (
        "" if peak["datasheet"] is None else f"; datasheet {_si(peak['datasheet'], 'FLOP/s')}"
    )
    tf32 = r["tf32"]
    tf32_text = "" if tf32 is None else f" (TF32 matmul {tf32['matmul']}, conv {tf32['conv']})"
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
            f"{r['accum_steps']}, {r['data']} data; precision {r['precision']}{tf32_text}",
            f"  FLOPs        {_si(r['flops_per_step'], 'FLOP')} per step (matrix products, "
            f"convolutions, attention; forward + backward; {r['flops_counted_steps']} untimed "
            "step(s))",
            f"  peak         {_si(peak['measured'], 'FLOP/s')} measured in {r['precision']} "
            f"(matmul {_si(peak['matmul'], 'FLOP/s')}, conv {_si(peak['conv'], 'FLOP/s')})"
            + datasheet,
            f"  utilisation  {_si(r['flops_per_second'], 'FLOP/s')} per step: MFU "
            f"{_pct(r['mfu'])} of the measured peak"
            + (
                ""
                if r["mfu_datasheet"] is None
                else f", {_pct(r['mfu_datasheet'])} of the datasheet"
            ),
            "  phases (mean per step; FLOPs, FLOP/s and MFU where it runs model passes):",
            *phases,
            f"  model passes alone {r['model_passes_seconds'] * 1000:.1f} ms; step / passes = "
            f"{r['overhead_ratio']:.3f}; step / its model phases = {r['model_phase_ratio']:.3f}",
        ]
    )
