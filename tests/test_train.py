import json
import os
import subprocess
import sys
from types import SimpleNamespace

import torch

from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.engine.run import length_line
from dualteacher.engine.trainer import train

from .conftest import TINY


def test_cli_train_and_eval_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dualteacher", "train", "configs/demo.yaml", *TINY]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "done: 4 steps" in proc.stdout
    # 4 steps x 2 images, over 16 unlabelled and 8 labelled images
    assert (
        "run length: 4 steps: 0.5 passes over the 16 unlabelled images (2 per step), "
        "1.0 passes over the 8 labelled (2 per step)" in proc.stdout
    )
    for name in ("config.yaml", "metrics.jsonl", "latest.pt", "best.pt"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "miou_student" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"loss_x", "loss_ic", "mask_ratio", "active_teacher", "lr"} <= set(train_rows[0])
    assert [r["step"] for r in val_rows] == [2, 4]
    assert {"miou_teacher_a", "miou_teacher_b"} <= set(val_rows[0])
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["method"]["name"] == "dual_teacher"
    assert any(k.startswith("teachers.1.") for k in ckpt["state"])
    assert {"optimizer", "scheduler", "rng", "classes"} <= set(ckpt)

    proc = subprocess.run(
        [sys.executable, "-m", "dualteacher", "eval", str(out / "best.pt"), "--models", "all"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "teacher_b" in proc.stdout and "mIoU" in proc.stdout and "gravel" in proc.stdout


def test_cli_reports_bad_config_key_without_traceback(capsys, tmp_path):
    try:
        main(["train", "demo", "train.stepz=2", "--out", str(tmp_path)])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.stepz'" in err and "Traceback" not in err


def _weights(path):
    return load_checkpoint(path)["state"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    steps = ["train.steps=6", "train.eval_every=2", "train.ckpt_every=100"]
    full = load_config("demo", [*TINY, *steps, f"train.out_dir={tmp_path / 'full'}"])
    train(full)
    split = load_config("demo", [*TINY, *steps, f"train.out_dir={tmp_path / 'split'}"])
    first = train(split, stop_after=3)  # as if killed after step 3
    assert first.steps == 3 and load_checkpoint(tmp_path / "split" / "latest.pt")["step"] == 3
    second = train(split)  # finds latest.pt and resumes
    assert second.steps == 6
    a, b = _weights(tmp_path / "full" / "latest.pt"), _weights(tmp_path / "split" / "latest.pt")
    assert a.keys() == b.keys()
    assert any(k.startswith("teachers.0.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_length_counts_every_process_and_accumulated_batch():
    cfg = load_config("configs/demo.yaml", ["train.accum_steps=3"])
    bundle = SimpleNamespace(labeled=[0] * 40, unlabeled=[0] * 1000)
    # demo.yaml: 8 labelled and 4 unlabelled per micro-batch; x 2 processes x 3 micro-batches
    line = length_line(cfg, bundle, 500, world_size=2, uses_unlabeled=True)
    assert line == (
        "run length: 500 steps: 12.0 passes over the 1000 unlabelled images (24 per step), "
        "600.0 passes over the 40 labelled (48 per step)"
    )
    # supervised reads no unlabelled images
    assert length_line(cfg, bundle, 500, 2, uses_unlabeled=False) == (
        "run length: 500 steps: 600.0 passes over the 40 labelled (48 per step)"
    )
    assert length_line(cfg, None, 500, 1, True) is None
