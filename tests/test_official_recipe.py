"""Official Dual Teacher recipe details offered as options: the LR horizon of a fixed number of
steps (``optim.schedule_steps``, ``docs/method.md`` F16), validation every epoch
(``train.eval_every_epochs``, F17), and the mmseg padding of the weak views in ``faithful``
(F14; docs/methods.md table "Dual Teacher: faithful and clean")."""

from __future__ import annotations

import json

import pytest
import torch

import dualteacher.engine.run as run_module
import dualteacher.engine.trainer as trainer
from dualteacher.config import OptimConfig, load_config
from dualteacher.engine.optim import build_scheduler, lr_factor
from dualteacher.errors import ConfigError

from .conftest import TINY

# (step, run length, schedule_steps, warmup_steps) -> lr factor, poly power 1
LR_TABLE = [
    (0, 100, None, 0, 1.0),
    (50, 100, None, 0, 0.5),
    (99, 100, None, 0, 0.01),
    (50, 100, 200, 0, 0.75),  # the horizon is schedule_steps, not the run
    (199, 100, 200, 0, 1 / 200),
    (250, 100, 200, 0, 1 / 200),  # past it the lr keeps its last value (PolyWarmupAdamW)
    (10, 100, 200, 20, 1e-6 + (1 - 1e-6) * 10 / 20),  # warm-up first, as before
    # official ADE20K run: 200 epochs at 1263 labels end at step 31600, lr 0.37x of the peak
    (31600, 31600, 50000, 1500, 1 - 31600 / 50000),
]


@pytest.mark.parametrize(("step", "total", "schedule_steps", "warmup", "factor"), LR_TABLE)
def test_lr_factor_table(step, total, schedule_steps, warmup, factor):
    cfg = OptimConfig(poly_power=1.0, schedule_steps=schedule_steps, warmup_steps=warmup)
    assert lr_factor(step, total, cfg) == pytest.approx(factor)


def test_bad_schedule_steps_is_a_config_error():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="optim.schedule_steps=0"):
        build_scheduler(opt, 10, OptimConfig(schedule_steps=0))


def test_eval_interval_in_steps_or_epochs():
    cfg = load_config(None, ["train.eval_every=7"])
    assert trainer.eval_interval(cfg, epoch_steps=5) == 7
    cfg = load_config(None, ["train.eval_every=7", "train.eval_every_epochs=2"])
    assert trainer.eval_interval(cfg, epoch_steps=5) == 10
    with pytest.raises(ConfigError, match="train.eval_every_epochs=0"):
        load_config(None, ["train.eval_every_epochs=0"])  # refused when the config is loaded
    cfg = load_config(None)
    cfg.train.eval_every_epochs = 0  # and when a config built in Python reaches the loop
    with pytest.raises(ConfigError, match="train.eval_every_epochs=0"):
        trainer.eval_interval(cfg, epoch_steps=5)


def test_ade20k_paper_config_uses_the_official_horizon_and_per_epoch_validation():
    cfg = load_config("ade20k_mitb1_512")
    assert cfg.method.dual_teacher.mode == "faithful"
    assert cfg.optim.schedule_steps == 50000 and cfg.train.eval_every_epochs == 1
    assert (cfg.train.epochs, cfg.optim.warmup_steps, cfg.optim.poly_power) == (200, 1500, 1.0)


def test_training_run_uses_the_horizon_the_epoch_validation_and_the_padding(tmp_path, monkeypatch):
    seen = {}
    real = run_module.build_train_loaders

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "build_train_loaders", spy)
    cfg = load_config(
        "demo",
        [
            *TINY,  # faithful
            "train.steps=4",
            "train.epoch_steps=2",
            "train.eval_every=3",  # unused: eval_every_epochs is set
            "train.eval_every_epochs=1",
            "train.eval_teachers=false",
            "optim.schedule_steps=3",
            "optim.poly_power=1.0",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    trainer.train(cfg)
    assert seen["official_pad"] is True  # faithful: mmseg padding of the weak views
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "miou_student" in r] == [2, 4]  # every epoch (2 steps)
    # lr after step s is the factor of step s: (1 - s / 3), held from step 2 on
    lrs = [r["lr"] / cfg.optim.lr for r in rows if "loss" in r]
    assert lrs == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3])
