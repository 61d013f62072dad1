"""``benchmarks/gpu_check.sh``: its tiny CPU mode runs every check, so the GPU script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

TRAINS = ["train_amp_none", "train_amp_bf16", "train_amp_fp16", "train_channels_last"]
BENCH = [
    f"bench_{m}@{c}_{v}" for m, c, *_ in gpu_check.CPU.bench for v in ("amp_none", "amp_bf16_cl")
]


@pytest.mark.slow
def test_cpu_mode_runs_every_check_and_writes_one_json(tmp_path):
    out = tmp_path / "res" / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    env.pop("OUT", None)
    script = REPO / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(
        ["bash", str(script), "--cpu", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["summary"]["fail"] == 0
    checks = {c["name"]: c for c in report["checks"]}
    plan = gpu_check.Checks(gpu_check.CPU, tmp_path, None, cuda=False).plan()
    assert list(checks) == [name for name, _ in plan]
    # only what needs CUDA is left out, and it says so
    assert checks["pytest_cuda"]["status"] == "not run"
    assert checks["pytest_cuda"]["reason"] == "not run: no CUDA"
    assert all(c["status"] == "pass" for n, c in checks.items() if n != "pytest_cuda"), checks
    for name in [*TRAINS, "train_compile"]:
        n = checks[name]["numbers"]
        assert n["steps"] == gpu_check.CPU.steps and n["bad_steps"] == 0, name
        assert 0 <= n["miou_student"] <= 100 and n["train_seconds"] > 0, name
    assert checks["train_compile"]["numbers"]["compile_backend"].startswith("eager")
    assert "train.compile=true" in checks["train_compile"]["command"]
    assert "train.amp=fp16" in checks["train_amp_fp16"]["command"]
    # eval of the run's checkpoint gives the run's own final validation mIoU
    trained = checks["train_amp_none"]["numbers"]["miou_student"]
    assert checks["eval_whole"]["numbers"]["miou"] == pytest.approx(trained, abs=0.01)
    assert "eval.mode=sliding" in checks["eval_sliding"]["command"]
    assert checks["predict"]["numbers"]["images"] == len(gpu_check.CPU.predict_sizes)
    run = checks["torchrun_sigterm_resume"]["numbers"]
    assert run["backend"] == "gloo" and run["final_step"] == gpu_check.CPU.torchrun_steps
    assert gpu_check.CPU.sigterm_after <= run["stopped_at"] == run["resumed_from"]
    for name in BENCH:
        n = checks[name]["numbers"]
        assert n["images_per_second"] > 0 and n["batch"] == n["batch_u"] == 2, name
        assert (n["amp"], n["channels_last"]) == (
            ("bf16", True) if name.endswith("cl") else ("none", False)
        )
    speedup = checks["bench_speedup"]["numbers"]
    assert set(speedup) == {"unet-r18@16", "segformer-b0@32", "criterion"}
    # the short table ends the output
    assert f"{len(checks) - 1} passed, 0 failed, 1 not run" in proc.stdout


def test_a_failing_check_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    broken = [*gpu_check.CPU.train, "train.no_such_key=1"]
    monkeypatch.setattr(
        gpu_check, "CPU", gpu_check.dataclasses.replace(gpu_check.CPU, train=broken)
    )

    def crash(self, r):  # a bug in the script itself
        raise KeyError("oops")

    monkeypatch.setattr(gpu_check.Checks, "predict", crash)
    out = tmp_path / "r.json"
    only = ["train_amp_none", "eval_whole", "predict", "bench_unet-r18@16_amp_none"]
    argv = ["--cpu", "--out", str(out), "--work", str(tmp_path), "--only", ",".join(only)]
    assert gpu_check.main(argv) == 1
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert checks["train_amp_none"]["status"] == "fail"
    assert "status 2" in checks["train_amp_none"]["reason"]
    assert "train.no_such_key" in checks["train_amp_none"]["log_tail"]
    assert checks["eval_whole"]["reason"] == "not run: needs train_amp_none, which did not pass"
    assert checks["bench_unet-r18@16_amp_none"]["status"] == "pass"
    assert checks["predict"]["status"] == "fail"
    assert checks["predict"]["reason"] == "KeyError: 'oops'"
    assert "in crash" in checks["predict"]["log_tail"]  # the traceback
    assert checks["eval_sliding"]["reason"] == "not run: not in --only"
    assert "1 passed, 2 failed" in capsys.readouterr().out


def test_speedup_criterion_on_cuda(tmp_path):
    verbs = gpu_check.Verbs(gpu_check.GPU, tmp_path, time.monotonic() + 60)
    checks = gpu_check.Checks(gpu_check.GPU, tmp_path, verbs, cuda=True)
    for ratio, status in ((1.6, "pass"), (1.4, "fail")):
        for model, crop, *_ in gpu_check.GPU.bench:
            for variant, ips in (("amp_none", 10.0), ("amp_bf16_cl", 10.0 * ratio)):
                r = gpu_check.Result(f"bench_{model}@{crop}_{variant}", "pass")
                r.numbers["images_per_second"] = ips
                checks.results[r.name] = r
        r = gpu_check.Result("bench_speedup")
        gpu_check.run_check(r, checks.bench_speedup, checks)
        assert r.status == status and r.numbers["deeplabv3plus-r101@513"] == ratio
        assert r.numbers["segformer-b1@512"] == ratio


def test_time_budget_marks_the_rest_not_run(tmp_path):
    out = tmp_path / "r.json"
    start = time.monotonic()
    assert (
        gpu_check.main(["--cpu", "--out", str(out), "--work", str(tmp_path), "--budget", "1"]) == 0
    )
    assert time.monotonic() - start < 60
    checks = json.loads(out.read_text())["checks"]
    assert all(c["reason"].startswith("not run") for c in checks)
    assert "time budget (1 s) is used up" in checks[1]["reason"]
