"""This process's device, what it supports, and the backend settings of a run.

``select_device`` maps ``train.device`` to one device under any launcher: a single process,
``torchrun`` with every GPU of the node visible (``cuda:LOCAL_RANK``), or a launcher that
exposes one GPU per process (``CUDA_VISIBLE_DEVICES`` per task, as SLURM's ``--gpus-per-task``
does: ``cuda:0``). ``check_amp`` refuses ``train.amp=bf16`` on a GPU without bfloat16 before
anything is built. ``backend_settings`` turns on cuDNN autotuning for a run (its crops have one
size), or deterministic algorithms with ``train.deterministic``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator

import torch

from dualteacher.config import AmpMode, TrainConfig
from dualteacher.errors import ConfigError


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)


def select_device(name: str) -> torch.device:
    """``train.device`` -> this process's device.

    ``auto``: CUDA if there is a usable GPU, else the CPU. ``cuda`` (and ``auto`` on a GPU
    machine) picks this process's GPU: the only visible one, or ``cuda:LOCAL_RANK`` when the
    node's processes (``LOCAL_WORLD_SIZE``, set by ``torchrun``) share several visible GPUs.
    ``cuda:N`` is taken as given. Any other layout is a ``ConfigError`` saying what to change.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device={name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={name}, but this process sees no usable CUDA GPU "
            f"(CUDA_VISIBLE_DEVICES {_visible()}, torch {torch.__version__}); use "
            "train.device=cpu, or auto to take a GPU when there is one"
        )
    count = torch.cuda.device_count()
    if device.index is not None:
        if device.index >= count:
            raise ConfigError(
                f"train.device={name}, but this process sees {count} GPU(s) (CUDA_VISIBLE_DEVICES "
                f"{_visible()}); use cuda:0 ... cuda:{count - 1}, or cuda to pick one per process"
            )
        return device
    if count == 1:  # one process, or a launcher that exposes one GPU to each process
        return torch.device("cuda", 0)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    if local_rank < count and local_world <= count:
        return torch.device("cuda", local_rank)
    raise ConfigError(
        f"{local_world} processes on this node (LOCAL_RANK={local_rank}) but {count} visible "
        f"GPUs (CUDA_VISIBLE_DEVICES {_visible()}): start at most {count} processes per node "
        f"(torchrun --nproc_per_node {count}), or let the launcher give each process one GPU"
    )


def _bf16_supported(device: torch.device) -> bool:
    """Native bfloat16 on ``device`` (Ampere or newer); torch's emulation on older GPUs runs,
    but slower than float32, so it does not count."""
    kwargs = {}
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        kwargs["including_emulation"] = False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(**kwargs)


def check_amp(amp: AmpMode, device: torch.device) -> None:
    """``ConfigError`` for a ``train.amp`` this device cannot run, before anything is built."""
    if amp == AmpMode.bf16 and device.type == "cuda" and not _bf16_supported(device):
        raise ConfigError(
            f"train.amp=bf16: {torch.cuda.get_device_name(device)} ({device}) has no native "
            "bfloat16 support; use train.amp=fp16 (loss-scaled float16) or train.amp=none"
        )


@contextlib.contextmanager
def backend_settings(cfg: TrainConfig) -> Iterator[None]:
    """The run's backend settings inside the block, the previous ones after it.

    Default: cuDNN autotuning (``cudnn.benchmark``): training crops have one size, so the
    fastest convolution algorithms are searched once. ``train.deterministic``: deterministic
    algorithms instead, without autotuning. ``warn_only``: a CUDA op without a deterministic
    kernel (e.g. bilinear upsampling backward) warns instead of ending the run; on the CPU every
    op the models use is deterministic.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if cfg.deterministic:
        # cuBLAS reads this when CUDA starts; it is needed for deterministic matrix products.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``cudnn.benchmark`` switched to ``enabled`` inside the block (evaluation of images of
    many sizes would autotune every new size)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
