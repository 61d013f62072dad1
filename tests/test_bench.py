"""``dualteacher bench``: real training steps on synthetic data, timed."""

from __future__ import annotations

import json

import pytest

from dualteacher.bench import bench, format_bench
from dualteacher.cli import main
from dualteacher.config import load_config


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
