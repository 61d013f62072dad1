"""The engine on a real GPU (``pytest -m cuda``; skipped where there is none, see conftest).

``test_engine.py`` checks the same logic on the CPU with ``torch.cuda`` replaced; these run it:
this device's RNG state, device selection, bf16 support, mixed precision with channels-last
and resume, one host synchronisation per step, and ``bench`` with ``train.compile``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from dualteacher.checkpoint import load_checkpoint, rng_state, set_rng_state
from dualteacher.config import load_config
from dualteacher.device import _bf16_supported, check_amp, select_device
from dualteacher.engine.run import build_training
from dualteacher.engine.trainer import train
from dualteacher.errors import ConfigError
from dualteacher.methods import StepInfo
from dualteacher.study.bench import bench, synthetic_batches

from .conftest import TINY

pytestmark = pytest.mark.cuda
CUDA = [*TINY, "train.device=cuda"]


def test_rng_state_of_this_device_round_trips():
    device = select_device("cuda")
    state = rng_state(device)
    assert state["cuda"].dtype == torch.uint8
    a = torch.rand(5, device=device)
    set_rng_state(state, device)
    assert torch.equal(torch.rand(5, device=device), a)
    set_rng_state({**state, "cuda": [state["cuda"]] * 9}, device)  # an older checkpoint
    assert torch.equal(torch.rand(5, device=device), a)


def test_device_and_bf16_on_this_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert select_device("auto") == torch.device("cuda", 0)
    amp = load_config(None, ["train.amp=bf16"]).train.amp
    if _bf16_supported(torch.device("cuda", 0)):
        check_amp(amp, torch.device("cuda", 0))
    else:
        with pytest.raises(ConfigError, match="train.amp=fp16"):
            check_amp(amp, torch.device("cuda", 0))


def test_mixed_precision_channels_last_training_resumes(tmp_path):
    amp = "bf16" if _bf16_supported(torch.device("cuda", 0)) else "fp16"
    args = [*CUDA, f"train.amp={amp}", "train.channels_last=true", f"train.out_dir={tmp_path}"]
    cfg = load_config("demo", args)
    assert train(cfg, stop_after=2).steps == 2
    state = load_checkpoint(tmp_path / "latest.pt")
    assert torch.is_tensor(state["rng"]["cuda"])  # this device's state, not a list
    result = train(cfg)
    assert result.steps == 4 and math.isfinite(result.miou)
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 4


def test_one_host_synchronisation_per_training_step():
    """The step's only wait for the GPU is the non-finite-loss decision (batches already on
    the device, float32, supervised: no method code in between)."""
    cfg = load_config("demo", [*CUDA, "method.name=supervised"])
    run = build_training(cfg, num_classes=5, verbose=False)
    batch_x, _ = synthetic_batches(cfg, 5, run.device, run.method)
    batches = iter([batch_x] * 4)
    run.step(batches, None, StepInfo(0, 1))  # first step: allocations, cuDNN autotuning
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in (1, 2):
                run.step(batches, None, StepInfo(step, 1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 2, [str(w.message) for w in syncs]


def test_bench_replays_the_compiled_passes():
    """With train.compile the replayed student passes go through the same compiled forward:
    no recompilation there (which would make the passes far slower than the step)."""
    cfg = load_config(
        None,
        [
            "model.name=unet-r18",
            "method.name=supervised",
            "data.crop_size=128",
            "data.batch_size=8",
            "train.device=cuda",
            "train.compile=true",
        ],
    )
    r = bench(cfg, steps=3, warmup=2, num_classes=5)
    assert r["compile"] and r["device"] == "cuda:0"
    assert 0.5 < r["overhead_ratio"] < 5, r
