"""Training-step benchmark on synthetic data: ``dualteacher bench``.

``bench(cfg)`` builds the method of ``cfg`` (student, teachers, optimizer) exactly as training
does, feeds it random images and masks at ``cfg.data.crop_size`` / ``cfg.data.batch_size`` (no
dataset needed) and times the real step: ``training_step`` + backward + optimizer and
scheduler step + ``after_step``. ``train.epoch_steps`` is 1 here, so Dual Teacher alternates
teacher A (CutMix branch) and teacher B (ClassMix branch) from one step to the next and the
mean covers both.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

from dualteacher.config import IGNORE_INDEX, Config
from dualteacher.engine.distributed import resolve_device
from dualteacher.engine.optim import build_optimizer, build_scheduler
from dualteacher.engine.trainer import seed_all
from dualteacher.errors import ConfigError
from dualteacher.methods import Method, StepInfo, build_method
from dualteacher.methods.base import Batch
from dualteacher.models import SegModel, build_model


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
    if method.needs_strong_view:
        batch_u["image_s"] = torch.randn(b_u, 3, c, c, device=device)
    return batch_x, batch_u


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss: kilobytes on Linux, bytes on macOS; the peak of the whole process so far.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


def bench(cfg: Config, steps: int = 3, warmup: int = 1, num_classes: int = 21) -> dict:
    """Time ``steps`` training steps (after ``warmup`` untimed ones) of ``cfg``'s method and
    model on synthetic data.

    Returns:
        ``step_seconds`` (mean), ``step_seconds_median``, ``step_times``, ``images_per_second``
        (labelled + unlabelled images per second), ``peak_memory_mb`` and ``peak_memory_kind``
        (``cuda_max_allocated``, or ``process_max_rss`` on the CPU: the process's peak
        resident memory, model building included), plus the settings measured.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps}, {warmup}")
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_all(cfg.train.seed)
    t0 = time.perf_counter()

    def make_model() -> SegModel:
        return build_model(cfg.model, num_classes, verbose=False)  # keep --json output clean

    method = build_method(cfg, make_model(), make_model).to(device)
    optimizer = build_optimizer(method.student, cfg.optim)
    scheduler = build_scheduler(optimizer, max(cfg.train.steps, warmup + steps), cfg.optim)
    build_seconds = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    images = 0
    for step in range(warmup + steps):
        batch_x, batch_u = synthetic_batches(cfg, num_classes, device, method)
        info = StepInfo(step, epoch_steps=1)
        _sync(device)
        start = time.perf_counter()
        method.train()
        out = method.training_step(batch_x, batch_u, info)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        scheduler.step()
        method.after_step(info)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
            images += len(batch_x["image"]) + (len(batch_u["image"]) if batch_u else 0)
    peak_mb, peak_kind = _peak_memory_mb(device)
    mean = statistics.fmean(times)
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "crop": cfg.data.crop_size,
        "batch": cfg.data.batch_size,
        "batch_u": (cfg.data.batch_size_u or cfg.data.batch_size) if batch_u else 0,
        "classes": num_classes,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "params_m": sum(p.numel() for p in method.student.parameters()) / 1e6,
        "warmup": warmup,
        "steps": steps,
        "step_seconds": mean,
        "step_seconds_median": statistics.median(times),
        "step_times": times,
        "images_per_second": images / sum(times),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "build_seconds": build_seconds,
        "loss": float(out["loss"].detach()),
    }


def format_bench(r: dict) -> str:
    """Human-readable lines of a ``bench`` result."""
    memory = {"cuda_max_allocated": "CUDA max allocated", "process_max_rss": "process max RSS"}
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
        ]
    )
