"""``dualteacher bench``: real training steps on synthetic data, timed."""

from __future__ import annotations

import json

import pytest
import torch

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.methods import StepInfo, build_method
from dualteacher.models import build_model
from dualteacher.study.bench import (
    PHASES,
    PassRecorder,
    bench,
    format_bench,
    synthetic_batches,
    time_model_passes,
)


def test_bench_dual_teacher_step():
    cfg = load_config(
        None,
        ["model.name=segformer-b0", "data.crop_size=64", "data.batch_size=2", "train.device=cpu"],
    )
    r = bench(cfg, steps=2, warmup=0, num_classes=5)
    assert r["method"] == "dual_teacher" and r["model"] == "segformer-b0"
    assert r["crop"] == 64 and r["batch"] == 2 and r["batch_u"] == 2 and r["classes"] == 5
    assert len(r["step_times"]) == 2 and r["step_seconds"] > 0
    assert r["step_seconds"] == pytest.approx(sum(r["step_times"]) / 2)
    assert r["images_per_second"] == pytest.approx(4 / r["step_seconds"])  # 2 + 2 per step
    assert r["peak_memory_kind"] == "process_max_rss" and r["peak_memory_mb"] > 100
    assert r["params_m"] == pytest.approx(3.7, abs=0.1)
    assert "mean" in format_bench(r) and "process max RSS" in format_bench(r)


def test_bench_cli_json(capsys):
    main(
        [
            "bench",
            "--model",
            "unet-r18",
            "--crop",
            "64",
            "--batch",
            "2",
            "--method",
            "supervised",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
        ]
    )
    r = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert r["method"] == "supervised" and r["batch_u"] == 0
    assert r["step_seconds"] > 0 and r["peak_memory_mb"] > 0


def test_bench_cli_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--model", "segformer-b9", "--steps", "1"])
    assert exit_.value.code == 2
    assert "unknown model" in capsys.readouterr().err


def test_bench_breaks_the_step_into_phases_and_replays_its_model_passes():
    cfg = load_config(
        None,
        ["model.name=unet-r18", "data.crop_size=32", "data.batch_size=2", "train.device=cpu"],
    )
    r = bench(cfg, steps=2, warmup=0, num_classes=5)  # steps 0 and 1: teacher A, teacher B
    assert list(r["phases"]) == [*PHASES, "other"]
    for name in ("teacher_fwd", "mixing", "student_fwd", "backward", "optimizer", "ema"):
        assert r["phases"][name] > 0, name
    assert sum(r["phases"].values()) == pytest.approx(r["step_seconds"])
    assert r["model_passes_seconds"] > 0
    assert r["overhead_ratio"] == pytest.approx(r["step_seconds"] / r["model_passes_seconds"])
    model_phases = sum(r["phases"][k] for k in ("teacher_fwd", "student_fwd", "backward"))
    assert r["model_phase_ratio"] == pytest.approx(r["step_seconds"] / model_phases)
    assert r["model_phase_ratio"] > 1  # data, mixing, optimizer and EMA cost something
    text = format_bench(r)
    assert "teacher_fwd" in text and "step / passes" in text


def test_model_passes_replay_what_the_step_ran():
    """Dual Teacher (faithful) runs, per step: two teacher forwards without gradient (pseudo-
    labels, and the IC term's second one) and two student forwards with gradient."""
    cfg = load_config(None, ["model.name=unet-r18", "data.crop_size=32", "data.batch_size=2"])
    method = build_method(cfg, build_model(cfg.model, 5), lambda: build_model(cfg.model, 5))
    recorder = PassRecorder(method)
    recorder.active = True
    method.train()
    batch_x, batch_u = synthetic_batches(cfg, 5, torch.device("cpu"), method)
    method.training_step(batch_x, batch_u, StepInfo(0, 1))
    kinds = [(p.model is method.student, p.grad, p.shape[0]) for p in recorder.passes]
    assert sorted(kinds) == [(False, False, 2), (False, False, 2), (True, True, 2), (True, True, 4)]
    assert time_model_passes(recorder.passes, torch.device("cpu"), cfg) > 0
    recorder.remove()
