"""Teacher-student distances in the log rows (issue 14: teachers that stay teachers)."""

import torch

from dualteacher.config import ModelConfig
from dualteacher.engine.trainer import train
from dualteacher.methods.ema import relative_distance
from dualteacher.models import build_model
from dualteacher.plots import read_metrics


def test_relative_distance_is_zero_for_a_copy_and_scales():
    a = build_model(ModelConfig(name="unet-r18"), 3)
    b = build_model(ModelConfig(name="unet-r18"), 3)
    b.load_state_dict(a.state_dict())
    assert relative_distance(b, a) == 0.0
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.5)  # w_b - w_a = 0.5 w_a
    assert abs(relative_distance(b, a) - 0.5) < 1e-5


def test_dual_teacher_logs_each_teachers_distance(tiny_cfg):
    cfg = tiny_cfg
    cfg.train.epoch_steps = 2  # shifts of 2 steps: A at steps 0-1, B at 2-3
    train(cfg)
    rows = [r for r in read_metrics(f"{cfg.train.out_dir}/metrics.jsonl") if "loss" in r]
    dist = {r["step"]: (r["teacher_a_dist"], r["teacher_b_dist"]) for r in rows}
    # after step 1 (i = 0 of A's shift: momentum 0) teacher A is a copy of the student;
    # B still has its own random decoder
    assert dist[1][0] == 0.0 and dist[1][1] > 0.01
    # after step 2 A is the mean of two student states: close to, but not, the student
    assert 0 < dist[2][0] < dist[1][1]
    # step 3 starts B's shift with a copy; A stays as it was, while the student moves on
    assert dist[3][1] == 0.0 and dist[3][0] > dist[2][0]


def test_teacher_agreement_benchmark_counts_pixels_and_mious(tiny_cfg):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from teacher_agreement import agreement

    cfg = tiny_cfg
    cfg.train.epoch_steps = 2
    result = train(cfg)
    got = agreement(f"{cfg.train.out_dir}/latest.pt")
    assert got["step"] == result.steps
    # the student's mIoU is the one training measured on the same validation set
    assert abs(got["miou"]["student"] - result.miou) < 0.006  # rounded to 2 decimals
    assert set(got["agreement_pct"]) == {"teacher_a", "teacher_b"}
    assert all(0 <= v <= 100 for v in got["agreement_pct"].values())
    # B's shift ended on a copy of the student (momentum 0 at its first step, then 0.5)
    assert got["relative_distance"]["teacher_b"] < got["relative_distance"]["teacher_a"]
    assert set(got["mean_logged_distance"]) == {"teacher_a", "teacher_b"}
