"""The engine's set-up: models rebuilt from checkpoints alone, device selection under every
GPU layout, bf16 checked first, this device's CUDA RNG state, cuDNN autotuning, what
``train.compile`` compiles, the step's buffer snapshot. No GPU here: ``torch.cuda`` is
replaced where a layout is simulated; ``test_cuda.py`` runs the real thing on a GPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torchvision

from dualteacher import checkpoint as ckpt
from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.device import check_amp, select_device
from dualteacher.engine import distributed
from dualteacher.engine import run as run_module
from dualteacher.engine import step as step_module
from dualteacher.engine.run import build_training
from dualteacher.engine.trainer import train
from dualteacher.errors import ConfigError
from dualteacher.methods import StepInfo
from dualteacher.methods.supervised import Supervised
from dualteacher.study.bench import bench

from .conftest import TINY

RARE = ["train.eval_every=100", "train.ckpt_every=100"]


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------- models from the checkpoint alone
def test_eval_report_predict_and_resume_need_no_pretrained_file(tmp_path, capsys):
    """The encoder weights file of model.pretrained is read once, when training starts; eval,
    eval --report, predict and a resumed run take every weight from the checkpoint."""
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    out = tmp_path / "run"
    base = [*TINY, *RARE, "method.name=supervised", f"model.pretrained={weights}"]
    code, _, err = cli(capsys, "train", "demo", *base, "train.steps=2", "--out", out)
    assert code == 0, err
    weights.unlink()  # moved away after training
    code, stdout, err = cli(capsys, "eval", out / "latest.pt")
    assert code == 0 and "mIoU" in stdout, err
    code, _, err = cli(capsys, "eval", out / "latest.pt", "--report", tmp_path / "report")
    assert code == 0 and (tmp_path / "report" / "iou.json").is_file(), err
    image = tmp_path / "image.png"
    torchvision.utils.save_image(torch.rand(3, 20, 24), image)
    code, _, err = cli(capsys, "predict", out / "latest.pt", image, "--out", tmp_path / "pred")
    assert code == 0 and (tmp_path / "pred" / "image.png").is_file(), err
    code, stdout, err = cli(capsys, "train", "demo", *base, "train.steps=3", "--out", out)
    assert code == 0 and "from step 2" in stdout and "done: 3 steps" in stdout, err


# ------------------------------------------------------------------------ device selection
@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n, **env)``: pretend this process sees ``n`` CUDA GPUs, with launcher ``env``."""

    def visible(n: int, **env: str) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return visible


def test_device_under_every_visible_gpu_layout(gpus):
    gpus(0)
    assert select_device("auto") == torch.device("cpu")
    gpus(1)
    assert select_device("auto") == torch.device("cuda", 0)
    # torchrun on a 4-GPU node, every GPU visible to every process
    gpus(4, LOCAL_RANK="2", LOCAL_WORLD_SIZE="4")
    assert select_device("auto") == select_device("cuda") == torch.device("cuda", 2)
    # a launcher that gives each process its own GPU (SLURM --gpus-per-task=1)
    gpus(1, LOCAL_RANK="3", LOCAL_WORLD_SIZE="4", CUDA_VISIBLE_DEVICES="3")
    assert select_device("auto") == torch.device("cuda", 0)
    gpus(4, LOCAL_RANK="1")
    assert select_device("cuda:3") == torch.device("cuda", 3)


@pytest.mark.parametrize(
    ("visible", "env", "name", "message"),
    [
        (2, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, "auto", "--nproc_per_node 2"),
        (2, {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, "auto", "at most 2 processes"),
        (2, {}, "cuda:2", "use cuda:0 ... cuda:1"),
        (0, {}, "cuda", "train.device=cpu"),
        (0, {}, "gpu", "not a device"),
    ],
)
def test_device_layouts_that_cannot_work_are_one_clear_error(gpus, visible, env, name, message):
    gpus(visible, **env)
    with pytest.raises(ConfigError, match=message):
        select_device(name)


def test_process_group_binds_the_selected_gpu(gpus, monkeypatch):
    """One GPU per process: rank 1 must use cuda:0, not cuda:LOCAL_RANK = cuda:1."""
    gpus(1, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda **kw: calls.append(("init", kw))
    )
    info = distributed.init_distributed(select_device("auto"))
    assert info.rank == 1 and info.local_rank == 1
    cuda0 = torch.device("cuda", 0)
    assert calls == [("set_device", cuda0), ("init", {"backend": "nccl", "device_id": cuda0})]


# ------------------------------------------------------------------------------------ bf16
def test_bf16_on_a_gpu_without_it_fails_before_anything_is_built(
    gpus, monkeypatch, capsys, tmp_path
):
    gpus(1)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100-SXM2-16GB")
    asked = []

    def no_bf16(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # torch's emulation does not count

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_bf16)
    monkeypatch.setattr(run_module, "build_data", lambda cfg: pytest.fail("data was built"))
    code, _, err = cli(
        capsys, "train", "demo", *TINY, "train.device=cuda", "train.amp=bf16", "--out", tmp_path
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "train.amp=bf16: Tesla V100-SXM2-16GB (cuda:0)" in err and "train.amp=fp16" in err
    assert asked == [False]
    # evaluating a bf16 run needs no bf16: evaluation runs in float32
    cfg = load_config("demo", ["train.device=cuda", "train.amp=bf16", "train.threads=1"])
    assert run_module._setup_process(cfg, training=False)[0] == torch.device("cuda", 0)
    check_amp(load_config(None, ["train.amp=fp16"]).train.amp, torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    check_amp(load_config(None, ["train.amp=bf16"]).train.amp, torch.device("cuda", 0))


# ------------------------------------------------------------------------ CUDA RNG states
def test_only_this_devices_cuda_rng_state_is_saved_and_restored(monkeypatch):
    got, put = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: got.append(d) or torch.ones(4))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: put.append((s.tolist(), d)))
    cuda1 = torch.device("cuda", 1)
    state = ckpt.rng_state(cuda1)
    assert got == [cuda1] and torch.equal(state["cuda"], torch.ones(4))
    ckpt.set_rng_state(state, cuda1)
    assert put == [([1.0] * 4, cuda1)]
    assert "cuda" not in ckpt.rng_state(torch.device("cpu"))

    # Older checkpoints: a list with every GPU the writer saw, replayed by index (IndexError
    # when fewer GPUs are visible on resume). Now: this device's entry, or the first.
    old = {**ckpt.rng_state(), "cuda": [torch.zeros(4), torch.full((4,), 2.0)]}
    put.clear()
    ckpt.set_rng_state(old, torch.device("cuda", 0))
    ckpt.set_rng_state(old, cuda1)
    ckpt.set_rng_state(old, torch.device("cuda", 5))
    assert [s[0] for s, _ in put] == [0.0, 2.0, 0.0]
    assert [d for _, d in put] == [torch.device("cuda", 0), cuda1, torch.device("cuda", 5)]


# -------------------------------------------------------------------------- backend settings
def _record_during_steps(monkeypatch) -> list[tuple[bool, bool]]:
    seen = []
    original = Supervised.training_step

    def step(self, batch_x, batch_u, info):
        seen.append((torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()))
        return original(self, batch_x, batch_u, info)

    monkeypatch.setattr(Supervised, "training_step", step)
    return seen


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_autotuning_unless_deterministic(deterministic, tmp_path, monkeypatch):
    seen = _record_during_steps(monkeypatch)
    before = torch.backends.cudnn.benchmark
    args = [*TINY, *RARE, "method.name=supervised", "train.steps=2"]
    args += [f"train.deterministic={str(deterministic).lower()}", f"train.out_dir={tmp_path}"]
    train(load_config("demo", args))
    assert seen == [(not deterministic, deterministic)] * 2
    assert torch.backends.cudnn.benchmark == before  # restored after the run


# ----------------------------------------------------------------------------------- compile
class _Compiled:
    """Stands in for ``torch.compile(module)``: counts the calls that go through it."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_compile_wraps_the_students_training_forward_and_bench_times_it(monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(_Compiled(module))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = load_config(
        None,
        [*TINY[:3], "data.crop_size=32", "data.batch_size=2", "train.compile=true"],
    )
    result = bench(cfg, steps=1, warmup=0, num_classes=5)
    (wrapper,) = compiled  # one compiled callable: the student's, not the teachers'
    assert isinstance(wrapper.module, torch.nn.Module) and hasattr(wrapper.module, "encoder")
    # Dual Teacher (faithful): two student gradient forwards per step, through the compiled
    # callable in the step and again in the replay of its model passes
    assert wrapper.calls == 4
    assert result["compile"] is True and result["overhead_ratio"] > 0


# -------------------------------------------------------------------- the step's snapshot
def test_step_snapshots_buffers_into_storage_allocated_once(tmp_path):
    cfg = load_config("demo", [*TINY, "train.device=cpu"])
    run = build_training(cfg)
    it_x, it_u = (iter(loader) for loader in run.batches())
    snapshot = run.step.snapshot
    # every buffer of the student and both teachers, BatchNorm statistics and counts
    assert len(snapshot.buffers) == len(list(run.method.buffers())) > 0
    pointers = [t.data_ptr() for t in snapshot.saved]
    for step in range(2):
        before = [b.clone() for b in snapshot.buffers]
        run.step(it_x, it_u, StepInfo(step, run.epoch_steps))
        assert [t.data_ptr() for t in snapshot.saved] == pointers
        assert all(torch.equal(a, b) for a, b in zip(before, snapshot.saved))
        assert not run.step.skipped


def test_one_all_reduce_per_step_carries_the_skip_and_the_stop(tmp_path, monkeypatch):
    calls = []

    def counting(device, *flags):
        calls.append(len(flags))
        return distributed.any_rank(device, *flags)

    monkeypatch.setattr(step_module, "any_rank", counting)
    cfg = load_config("demo", [*TINY, "method.name=supervised", "train.device=cpu"])
    run = build_training(cfg)
    it_x, _ = run.batches()
    it_x = iter(it_x)
    run.step(it_x, None, StepInfo(0, 1), stop=lambda: False)
    assert calls == [2] and not run.step.stop_requested
    run.step(it_x, None, StepInfo(1, 1), stop=lambda: True)
    assert calls == [2, 2] and run.step.stop_requested


def test_checkpoint_hint_names_the_saved_step_on_every_rank(tmp_path):
    """Ranks other than 0 write no file but know which step rank 0 saved ("resume from step
    None" before)."""
    from dualteacher.engine.guard import Checkpointer, StopSignals

    cfg = load_config("demo", [*TINY, "method.name=supervised", "train.device=cpu"])
    run = build_training(cfg)
    run.state.step = 3
    other_rank = Checkpointer(tmp_path, keep_last=1, is_main=False, device=run.device)
    other_rank.save(run.state)
    assert not list(Path(tmp_path).iterdir())  # nothing written by this rank
    message = str(StopSignals().stopped(3, other_rank))
    assert "to resume from step 3." in message and "None" not in message


@pytest.mark.slow
def test_bench_replays_compiled_passes_without_recompiling(monkeypatch):
    """Real TorchDynamo tracing (its "eager" backend: no code generation, so it runs on any
    CPU): neither the pass recorder's hooks nor the replay make the student recompile."""
    import functools

    from torch._dynamo.utils import counters

    import dualteacher.study.bench as bench_module

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    graphs = []
    replay = bench_module.time_model_passes

    def counting_replay(passes, device, cfg):
        before = counters["stats"]["unique_graphs"]
        seconds = replay(passes, device, cfg)
        graphs.append(counters["stats"]["unique_graphs"] - before)
        return seconds

    monkeypatch.setattr(bench_module, "time_model_passes", counting_replay)
    cfg = load_config(None, [*TINY[:3], "data.crop_size=32", "data.batch_size=2"])
    cfg.train.compile = True
    result = bench(cfg, steps=2, warmup=1, num_classes=5)
    assert graphs == [0, 0] and result["compile"]
