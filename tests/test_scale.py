"""Mixed precision, gradient accumulation, learning-rate scaling, the DDP plumbing that one
process can check, and the phase timer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from dualteacher.config import Config, load_config
from dualteacher.data import build_data
from dualteacher.data.loaders import build_train_loaders
from dualteacher.engine import run as run_module
from dualteacher.engine import trainer
from dualteacher.engine.distributed import grad_scaler, unused_parameters
from dualteacher.engine.optim import scaled_optim_config
from dualteacher.engine.step import StepRunner
from dualteacher.errors import ConfigError
from dualteacher.methods import METHODS, Method, StepInfo, build_method
from dualteacher.methods.base import PhaseTimer, phase, timing
from dualteacher.models import build_model
from dualteacher.study.bench import synthetic_batches

from .conftest import TINY


def test_bf16_autocast_training_on_cpu(tmp_path, monkeypatch):
    """Two Dual Teacher steps under bf16 autocast (channels-last too): the student's gradient
    forwards run in bfloat16, the weights stay float32 and the losses are finite."""
    dtypes = []

    class Recording(StepRunner):
        def __init__(self, method, *args, **kwargs):
            super().__init__(method, *args, **kwargs)
            method.student.register_forward_hook(
                lambda m, i, out: dtypes.append(out.dtype) if torch.is_grad_enabled() else None
            )

    monkeypatch.setattr(run_module, "StepRunner", Recording)
    cfg = load_config(
        "demo",
        [
            *TINY,
            "train.steps=2",
            "train.amp=bf16",
            "train.channels_last=true",
            f"train.out_dir={tmp_path}",
        ],
    )
    result = trainer.train(cfg)
    assert result.steps == 2 and dtypes and set(dtypes) == {torch.bfloat16}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    state = torch.load(tmp_path / "latest.pt", weights_only=True)["state"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())
    assert math.isfinite(result.miou)


class _Regression(Method):
    """A method around a linear model without BatchNorm: its loss is a mean over the batch, so
    accumulated micro-batches must give exactly the gradient of the whole batch."""

    name = "regression"
    uses_unlabeled = False

    def training_step(self, batch_x, batch_u, info):
        pred = self.student_forward(batch_x["image"])  # (B, 1)
        loss = ((pred - batch_x["target"]) ** 2).mean()
        return {"loss": loss, "loss_x": loss}


def _regression_step(data: list[dict], accum: int, amp: str = "none") -> torch.Tensor:
    torch.manual_seed(0)
    method = _Regression(nn.Linear(3, 1), Config(), lambda: None)
    optimizer = torch.optim.SGD(method.student.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = load_config(None, [f"train.accum_steps={accum}", f"train.amp={amp}"]).train
    scaler = grad_scaler(torch.device("cpu"), cfg.amp)
    runner = StepRunner(method, optimizer, scheduler, cfg, torch.device("cpu"), scaler=scaler)
    out = runner(iter(data), None, StepInfo(0, 1))
    assert set(out) == {"loss", "loss_x"}
    return torch.cat([p.detach().flatten() for p in method.student.parameters()])


def test_accumulation_equals_one_larger_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
    whole = _regression_step([{"image": x, "target": y}], accum=1)
    halves = [{"image": x[:2], "target": y[:2]}, {"image": x[2:], "target": y[2:]}]
    accumulated = _regression_step(halves, accum=2)
    torch.testing.assert_close(accumulated, whole)
    assert not torch.equal(whole, _regression_step([halves[0]], accum=1))


def test_fp16_uses_a_grad_scaler_and_still_steps():
    g = torch.Generator().manual_seed(1)
    data = [{"image": torch.randn(4, 3, generator=g), "target": torch.randn(4, 1, generator=g)}]
    fp32 = _regression_step(data, accum=1)
    fp16 = _regression_step(data, accum=1, amp="fp16")
    torch.testing.assert_close(fp16, fp32, atol=2e-3, rtol=2e-3)  # fp16 matmul, same update


def test_accumulation_consumes_batches_and_defines_the_epoch():
    cfg = load_config("demo", [*TINY, "train.accum_steps=2"])
    bundle = build_data(cfg.data)

    def first_images(start_step: int, accum: int, n: int) -> list[torch.Tensor]:
        loader, _ = build_train_loaders(
            bundle,
            cfg.data,
            seed=0,
            start_step=start_step,
            need_unlabeled=False,
            need_strong=False,
            accum_steps=accum,
        )
        it = iter(loader)
        return [next(it)["image"] for _ in range(n)]

    fresh = first_images(0, 1, 3)
    resumed = first_images(1, 2, 1)  # optimizer step 1 with 2 micro-batches = batch 2
    assert torch.equal(resumed[0], fresh[2])
    # 8 labelled images, 2 per batch, 2 micro-batches per step, 2 ranks: 1 step per epoch.
    assert trainer.steps_per_epoch(cfg, 8) == 2
    assert trainer.steps_per_epoch(cfg, 8, world_size=2) == 1


@pytest.mark.parametrize(
    ("mode", "world", "accum", "ref", "factor"),
    [
        ("none", 4, 2, None, 1.0),
        ("linear", 1, 1, None, 1.0),  # the reference defaults to data.batch_size
        ("linear", 4, 2, None, 8.0),
        ("linear", 2, 1, 32, 0.5),
        ("sqrt", 4, 1, None, 2.0),
    ],
)
def test_scale_lr(mode, world, accum, ref, factor):
    cfg = load_config(
        None,
        [
            "optim.lr=0.01",
            "data.batch_size=8",
            f"optim.scale_lr={mode}",
            f"train.accum_steps={accum}",
            *([f"optim.ref_batch_size={ref}"] if ref else []),
        ],
    )
    optim, line = scaled_optim_config(cfg, world)
    assert optim.lr == pytest.approx(0.01 * factor)
    assert cfg.optim.lr == 0.01  # the stored config keeps the recipe's lr
    assert f"learning rate {optim.lr:g}" in line
    assert f"global batch {8 * world * accum} = 8 per process x {world} processes" in line


def test_scale_lr_rejects_a_bad_reference_and_an_unknown_mode():
    with pytest.raises(ConfigError, match="ref_batch_size"):
        scaled_optim_config(load_config(None, ["optim.ref_batch_size=0"]))
    with pytest.raises(ConfigError, match="scale_lr"):
        load_config(None, ["optim.scale_lr=cubic"])
    with pytest.raises(ConfigError, match="Valid keys"):
        load_config(None, ["train.amp_mode=bf16"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_gradient_forward_of_the_student_goes_through_the_wrapper(name):
    """Under DDP only the wrapper all-reduces gradients: a student forward that takes
    gradient outside ``student_forward`` would train without synchronisation."""
    cfg = load_config(None, ["model.name=unet-r18", "data.crop_size=32", "data.batch_size=2"])
    cfg.method.name = name
    method = build_method(cfg, build_model(cfg.model, 5), lambda: build_model(cfg.model, 5))
    inside, grad_forwards = [], []

    def wrapper(x, **kwargs):
        inside.append(True)
        try:
            return method.student(x, **kwargs)
        finally:
            inside.pop()

    def check(module, args):
        if torch.is_grad_enabled():
            grad_forwards.append(bool(inside))

    method.wrap_student(wrapper)
    method.student.register_forward_pre_hook(check)
    method.train()
    batch_x, batch_u = synthetic_batches(cfg, 5, torch.device("cpu"), method)
    method.training_step(batch_x, batch_u, StepInfo(0, 1))
    assert grad_forwards and all(grad_forwards)


def test_unused_parameters_are_found():
    model = build_model(load_config(None).model, 5)
    assert unused_parameters(model, 32) == []
    model.register_parameter("spare", nn.Parameter(torch.zeros(3)))
    assert unused_parameters(model, 32) == ["spare"]
    assert model.training  # the probe restores the mode


def test_phase_timer_is_free_when_off_and_does_not_nest():
    assert phase("a") is phase("b")  # one shared no-op context, nothing recorded
    timer = PhaseTimer()
    with timing(timer):
        with phase("outer"), phase("inner"):
            pass
        with phase("outer"):
            pass
    assert set(timer.seconds) == {"outer"} and timer.seconds["outer"] >= 0
    with phase("after"):
        pass
    assert "after" not in timer.seconds


def test_fp16_loss_scale_is_checkpointed_and_resumed(tmp_path):
    """A resumed fp16 run continues from the saved loss scale, not a fresh 65536."""
    from dualteacher.checkpoint import load_checkpoint, save_checkpoint

    overrides = [*TINY, "method.name=supervised", "train.amp=fp16", f"train.out_dir={tmp_path}"]
    trainer.train(load_config("demo", [*overrides, "train.steps=3"]), stop_after=2)
    state = load_checkpoint(tmp_path / "latest.pt")
    assert state["grad_scaler"]["scale"] > 0
    # Pretend the run had backed its scale off to 2**9; resuming must keep that.
    state["grad_scaler"]["scale"] = 512.0
    for old in tmp_path.glob("*.pt"):
        old.unlink()
    save_checkpoint(state, tmp_path / "latest.pt")
    trainer.train(load_config("demo", [*overrides, "train.steps=3"]))
    assert load_checkpoint(tmp_path / "latest.pt")["grad_scaler"]["scale"] in (256.0, 512.0)
