"""``dualteacher bench``: real training steps on synthetic data, timed."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.errors import ConfigError
from dualteacher.methods import StepInfo, build_method
from dualteacher.methods.base import phase
from dualteacher.models import MODELS, ModelSpec, build_model
from dualteacher.study.bench import (
    PHASES,
    PassRecorder,
    bench,
    count_step_flops,
    datasheet_peak,
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


# ------------------------------------------------------------------------ FLOPs and utilisation
WIDTH = 8  # channels of the hand-countable net


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, WIDTH, 3, padding=1)

    def forward(self, x):  # smp's layout: the input, then the feature maps
        return [x, self.conv(x).relu()]


class _Last(nn.Module):
    def forward(self, features):
        return features[-1]


class _PixelLinear(nn.Module):
    """A linear layer over the channels of every pixel: (B, C, H, W) -> (B, K, H, W)."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, f):
        return self.fc(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvLinear(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.encoder, self.decoder = _Encoder(), _Last()
        self.segmentation_head = _PixelLinear(num_classes)


def _hand_count(batch: int, side: int, classes: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of ``_ConvLinear`` on ``batch`` images of ``side`` px, 2 per
    multiply-add. The 3x3 convolution: 9 * 3 multiply-adds per output value; the linear layer:
    WIDTH per output value. Backward: the convolution's weight gradient only (its input, the
    image, needs none), the linear layer's input and weight gradients (twice its forward)."""
    pixels = batch * side * side
    conv = 2 * pixels * WIDTH * 3 * 9
    linear = 2 * pixels * classes * WIDTH
    return conv + linear, conv + 2 * linear


def test_a_grouped_convolution_backward_costs_twice_its_forward():
    """Depthwise convolutions (EfficientNet's): the input and the weight gradient each cost the
    forward's FLOPs. PyTorch's own formula counts the weight gradient as a dense convolution's,
    ``groups`` (here 8) times too many: bench's MFU of unet-effl0 came out above 1."""
    conv = nn.Conv2d(WIDTH, WIDTH, 3, padding=1, groups=WIDTH, bias=False)
    x = torch.randn(2, WIDTH, 16, 16, requires_grad=True)
    flops = count_step_flops(lambda: conv(x).sum().backward())
    forward = 2 * (2 * 16 * 16 * WIDTH) * 9  # 9 multiply-adds per output value (one channel)
    assert flops["step"] == 3 * forward  # forward, input gradient, weight gradient


@pytest.fixture
def conv_linear(monkeypatch):
    spec = ModelSpec(lambda k, cfg: _ConvLinear(k), 1, "conv + linear, hand-countable")
    monkeypatch.setitem(MODELS, "conv-linear", spec)


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "dual_teacher"])
def test_bench_counts_the_flops_of_a_small_model_as_by_hand(conv_linear, method):
    b_u = 2 if method == "dual_teacher" else 3  # faithful Dual Teacher: as many as labelled
    cfg = load_config(
        None,
        [
            "model.name=conv-linear",
            f"method.name={method}",
            "data.crop_size=16",
            "data.batch_size=2",
            f"data.batch_size_u={b_u}",
            "train.device=cpu",
        ],
    )
    r = bench(cfg, steps=1, warmup=0, num_classes=5)
    fwd_x, bwd_x = _hand_count(2, 16, 5)
    fwd_u, bwd_u = _hand_count(b_u, 16, 5)
    if method == "supervised":  # the student on the labelled batch, and its backward
        expected = {"teacher_fwd": 0, "student_fwd": fwd_x, "backward": bwd_x}
    elif method == "mean_teacher":  # the teacher labels the unlabelled batch; the student
        # runs on labelled + mixed unlabelled images in one batch
        expected = {"teacher_fwd": fwd_u, "student_fwd": fwd_x + fwd_u, "backward": bwd_x + bwd_u}
    else:  # faithful: two teacher passes (pseudo-labels, the IC term's second one); the
        # student on labelled + mixed, then on the strong view for the IC term
        expected = {
            "teacher_fwd": 2 * fwd_u,
            "student_fwd": fwd_x + 2 * fwd_u,
            "backward": bwd_x + 2 * bwd_u,
        }
    assert {k: r["flops"][k] for k in expected} == expected
    # Dual Teacher's mixing phase runs a small convolution of its own (ReCo's blur)
    total = sum(expected.values()) + r["flops"]["mixing"]
    assert r["flops"]["step"] == r["flops_per_step"] == total
    assert r["flops"]["other"] == r["flops"]["optimizer"] == r["flops"]["ema"] == 0


def test_flops_are_charged_to_the_outer_phase_and_the_rest_to_other():
    a = torch.randn(4, 6)
    b = torch.randn(6, 5)
    mm = 2 * 4 * 6 * 5  # one (4, 6) @ (6, 5)

    def step():
        a @ b  # outside every phase
        with phase("teacher_fwd"):
            a @ b
            with phase("student_fwd"):  # nested: charged to teacher_fwd, as PhaseTimer does
                a @ b
        with phase("backward"):
            a @ b
        with phase("sync"):  # DDP's phase, not one bench reports: counted as other
            a @ b

    flops = count_step_flops(step)
    assert flops["teacher_fwd"] == 2 * mm and flops["backward"] == mm
    assert flops["student_fwd"] == 0 and flops["other"] == 2 * mm and flops["step"] == 5 * mm
    assert list(flops) == [*PHASES, "other", "step"]


def test_bench_json_reports_flops_peak_and_utilisation(capsys):
    main(
        ["bench", "--model", "unet-r18", "--crop", "32", "--batch", "2", "--steps", "2",
         "--warmup", "0", "--device", "cpu", "--threads", "1", "--classes", "5", "--json"]
    )  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "dual_teacher" and r["precision"] == "fp32" and r["tf32"] is None
    assert r["flops_counted_steps"] == 2  # both teachers' branches
    flops, used, peak = r["flops"], r["utilisation"], r["peak_flops_per_second"]
    for name in ("teacher_fwd", "student_fwd", "backward"):
        assert flops[name] > 0, name
        u = used[name]
        assert u["flops_per_second"] == pytest.approx(flops[name] / r["phases"][name])
        assert u["mfu"] == pytest.approx(u["flops_per_second"] / peak["measured"])
        assert u["mfu"] > 0 and u["mfu_datasheet"] is None
    assert flops["step"] == pytest.approx(sum(v for k, v in flops.items() if k != "step"))
    # the backward of a network costs about twice its forward
    assert 1.5 < flops["backward"] / flops["student_fwd"] < 2.5
    assert r["flops_per_second"] == pytest.approx(flops["step"] / r["step_seconds"])
    assert r["mfu"] == pytest.approx(r["flops_per_second"] / peak["measured"]) and r["mfu"] > 0
    assert peak["measured"] == max(peak["matmul"], peak["conv"]) > 1e8  # > 0.1 GFLOP/s
    assert peak["datasheet"] is None and r["mfu_datasheet"] is None and r["gpu"] is None


def test_bench_text_shows_flops_and_utilisation():
    cfg = load_config(
        None,
        ["model.name=unet-r18", "method.name=supervised", "data.crop_size=32",
         "data.batch_size=2", "train.device=cpu"],
    )  # fmt: skip
    text = format_bench(bench(cfg, steps=1, warmup=0, num_classes=5))
    assert re.search(r"FLOPs +[\d.]+ [MG]FLOP per step", text), text
    assert "measured in fp32 (matmul" in text and "of the measured peak" in text
    assert re.search(r"student_fwd .* [MG]FLOP/s  MFU \d+\.\d %", text), text


def test_bench_tf32_is_for_cuda_only():
    cfg = load_config(None, ["model.name=unet-r18", "train.device=cpu"])
    with pytest.raises(ConfigError, match="--tf32"):
        bench(cfg, steps=1, warmup=0, tf32=True)


@pytest.mark.parametrize(
    ("name", "precision", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),  # SXM: 1,979 with sparsity
        ("NVIDIA H100 PCIe", "tf32", 378.0),
        ("NVIDIA H100 NVL", "fp16", 835.5),
        ("NVIDIA H200", "fp32", 67.0),
        ("NVIDIA H200 NVL", "tf32", 417.5),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
        ("NVIDIA L4", "fp16", 121.0),
        ("NVIDIA L40S", "fp32", 91.6),
        ("NVIDIA A10", "bf16", 125.0),
        ("NVIDIA L40", "fp32", None),  # not an L4, not in the table
        ("Tesla T4", "fp16", None),
    ],
)
def test_datasheet_peaks_by_card_name(name, precision, tflops):
    peak = datasheet_peak(name, precision)
    assert (peak is None) if tflops is None else peak == pytest.approx(tflops * 1e12)
