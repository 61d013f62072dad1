"""``benchmarks/gpu_check.sh``: its tiny CPU mode runs every check, so the GPU script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

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
    rows = checks["flop_utilisation"]["numbers"]["rows"]
    measured = [x for x in rows if x["status"] == "pass"]  # no TF32 nor fp16 in CPU mode
    assert [(x["model"], x["precision"]) for x in measured] == [
        (m, p) for m, *_ in gpu_check.CPU.bench for p in ("fp32", "bf16")
    ]
    assert all(x["flops_per_step"] > 0 and x["mfu"] > 0 for x in measured), measured
    assert "FLOP utilisation (dualteacher bench" in proc.stdout
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


class _FakeBenchVerbs:
    """Stands in for ``Verbs`` on a GPU: records each verb's arguments and answers with a
    ``bench --json`` line whose speed depends on the precision the arguments ask for."""

    SPEED: ClassVar[dict[str, float]] = {"fp32": 1.0, "tf32": 4.0, "bf16": 8.0, "fp16": 7.0}

    def __init__(self, logs: Path, failing: str = ""):
        self.argv: dict[str, list[str]] = {}
        self.logs, self.failing = logs, failing

    def timeout(self, limit=None):
        return 60.0

    def __call__(self, name, argv, result):
        self.argv[name] = argv
        if name == self.failing:
            return gpu_check.Run(1, "error: out of memory", 1.0)
        amp = next((a.split("=")[1] for a in argv if a.startswith("train.amp=")), "none")
        tf32 = argv[argv.index("--tf32") + 1] if "--tf32" in argv else "default"
        precision = amp if amp != "none" else "fp32" if tf32 == "off" else "tf32"
        speed = self.SPEED[precision]
        flops, achieved, peak = 2e12, 20e12 * speed, 50e12 * speed
        b = {
            "model": argv[argv.index("--model") + 1], "crop": int(argv[argv.index("--crop") + 1]),
            "batch": 8, "batch_u": 8, "amp": amp,
            "channels_last": "train.channels_last=true" in argv, "device": "cuda:0",
            "images_per_second": 16 * achieved / flops,
            "step_seconds": flops / achieved, "step_seconds_median": flops / achieved,
            "overhead_ratio": 1.1, "peak_memory_mb": 9000.0, "precision": precision,
            "tf32": {"matmul": tf32 == "on", "conv": tf32 != "off"}, "gpu": "NVIDIA H100 80GB HBM3",
            "flops_per_step": flops, "flops_per_second": achieved,
            "peak_flops_per_second": {"matmul": peak, "conv": peak / 2, "measured": peak,
                                      "datasheet": 2 * peak},
            "mfu": achieved / peak, "mfu_datasheet": achieved / (2 * peak),
            "utilisation": {k: {"flops_per_second": achieved * f, "mfu": achieved * f / peak}
                            for k, f in (("teacher_fwd", 0.5), ("student_fwd", 1.0),
                                         ("backward", 1.2))},
        }  # fmt: skip
        return gpu_check.Run(0, "built the run\n" + json.dumps(b) + "\n", 1.0)


def _run_flop_checks(tmp_path, verbs):
    checks = gpu_check.Checks(gpu_check.GPU, tmp_path, verbs, cuda=True)
    plan = dict(checks.plan())
    for name, fn in plan.items():
        if name.startswith("bench_") and name != "bench_speedup":
            r = checks.results[name] = gpu_check.Result(name)
            gpu_check.run_check(r, fn, checks)
    r = checks.results["flop_utilisation"] = gpu_check.Result("flop_utilisation")
    gpu_check.run_check(r, plan["flop_utilisation"], checks)
    return checks, r


def test_flop_utilisation_rows_on_a_gpu_from_fake_bench_results(tmp_path):
    verbs = _FakeBenchVerbs(tmp_path)
    _, r = _run_flop_checks(tmp_path, verbs)
    assert r.status == "pass", r.reason
    # what each precision's bench is asked for: TF32 off / on, AMP fp16 + channels_last
    for model, crop, *_ in gpu_check.GPU.bench:
        argv = {v: verbs.argv[f"bench_{model}@{crop}_{v}"] for v in ("fp32", "tf32", "amp_fp16_cl")}
        # fp32 and TF32 in the contiguous layout (channels_last is the default)
        assert argv["fp32"][-3:] == ["--tf32", "off", "train.channels_last=false"]
        assert argv["tf32"][-3:] == ["--tf32", "on", "train.channels_last=false"]
        assert argv["amp_fp16_cl"][-2:] == ["train.amp=fp16", "train.channels_last=true"]
        for a in argv.values():  # the shorter runs: 3 timed steps after 2 warm-up
            assert a[a.index("--steps") + 1 :][:3] == ["3", "--warmup", "2"]
    rows = r.numbers["rows"]
    assert [(x["model"], x["precision"]) for x in rows] == [
        (m, p) for m, *_ in gpu_check.GPU.bench for p in ("fp32", "tf32", "bf16", "fp16")
    ]
    for row in rows:
        speed = _FakeBenchVerbs.SPEED[row["precision"]]
        assert row["status"] == "pass" and row["flops_per_step"] == 2e12
        assert row["flops_per_second"] == pytest.approx(20e12 * speed)
        assert row["peak_measured"] == pytest.approx(50e12 * speed)
        assert row["mfu"] == pytest.approx(0.4) and row["mfu_datasheet"] == pytest.approx(0.2)
        assert row["mfu_phases"] == pytest.approx(
            {"teacher_fwd": 0.2, "student_fwd": 0.4, "backward": 0.48}
        )
    bf16 = next(x for x in rows if x["precision"] == "bf16")
    assert bf16["check"] == "bench_deeplabv3plus-r101@513_amp_bf16_cl"  # the speed-up's bench
    table = gpu_check.format_mfu_table(rows).splitlines()
    line = next(ln for ln in table if ln.startswith("segformer-b1@512        tf32"))
    # FLOP/step, FLOP/s, peak measured, peak datasheet, MFU of each, then the phases' MFU
    assert line.split()[2:14] == ["2", "TFLOP", "80", "TFLOP/s", "200", "TFLOP/s", "400",
                                  "TFLOP/s", "40.0", "%", "20.0", "%"]  # fmt: skip
    assert line.endswith("  20.0 % / 40.0 % / 48.0 %")


def test_flop_utilisation_says_which_bench_failed(tmp_path):
    verbs = _FakeBenchVerbs(tmp_path, failing="bench_segformer-b1@512_amp_fp16_cl")
    _, r = _run_flop_checks(tmp_path, verbs)
    assert r.status == "pass"  # the other rows were measured
    row = next(
        x for x in r.numbers["rows"] if x["model"] == "segformer-b1" and x["precision"] == "fp16"
    )
    assert row["status"] == "fail" and "status 1" in row["reason"]
    table = gpu_check.format_mfu_table(r.numbers["rows"])
    assert "segformer-b1@512        fp16    fail: bench exited with status 1" in table
    # CPU mode: no TF32 and no fp16 rows, said so
    rows = gpu_check.mfu_rows(gpu_check.CPU, {})
    assert "unet-r18@16             tf32    not run: no tf32 in cpu mode" in (
        gpu_check.format_mfu_table(rows)
    )
    assert {x["precision"]: x["reason"] for x in rows[:4]} == {
        "fp32": "not run: not in the plan",
        "tf32": "not run: no tf32 in cpu mode",
        "bf16": "not run: not in the plan",
        "fp16": "not run: no fp16 in cpu mode",
    }


def test_flop_utilisation_needs_a_measured_row_with_flops(tmp_path):
    verbs = _FakeBenchVerbs(tmp_path)
    checks, r = _run_flop_checks(tmp_path, verbs)
    checks.results["bench_deeplabv3plus-r101@513_tf32"].numbers["mfu"] = 0.0
    gpu_check.run_check(r, checks.flop_utilisation, checks)
    assert r.status == "fail" and r.reason == "deeplabv3plus-r101@513 tf32: MFU 0.0"
    checks.results = {}
    gpu_check.run_check(r, checks.flop_utilisation, checks)
    assert r.status == "not run" and r.reason == "not run: no bench result with FLOPs"
