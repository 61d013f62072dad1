"""Two-rank DDP on the CPU (gloo): training keeps every rank's models equal, evaluation under
two ranks scores each validation image once and gives the one-process numbers exactly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dualteacher.checkpoint import load_checkpoint
from dualteacher.config import load_config
from dualteacher.engine import trainer
from dualteacher.engine.distributed import shutdown
from dualteacher.engine.evaluate import evaluate_checkpoint
from dualteacher.engine.run import _build_method

from .conftest import TINY

WORLD = 2
# 3 steps of 2 + 2 images per rank; an epoch is 8 // (2 * 2) = 2 steps, so both teachers
# are on duty (A at steps 0-1, B at step 2) and both get EMA updates.
OVERRIDES = [*TINY, "train.steps=3", "train.eval_every=3", "train.ckpt_every=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str, result_dir: str) -> None:
    """One torchrun-like rank: the environment torchrun would set, then train and evaluate
    through the public API. Saves this rank's final method state and its eval results."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    runs = []
    build_training = trainer.build_training

    def capture(*args, **kwargs):  # keep a handle on the run that train() builds
        runs.append(build_training(*args, **kwargs))
        return runs[-1]

    trainer.build_training = capture
    cfg = load_config("demo", [*OVERRIDES, f"train.out_dir={out_dir}"])
    result = trainer.train(cfg)
    results = Path(result_dir)
    torch.save(runs[0].method.state_dict(), results / f"state{rank}.pt")
    metrics = evaluate_checkpoint(Path(out_dir) / "latest.pt", models="all")
    torch.save(
        {"eval": {n: m.confusion for n, m in metrics.items()}, "steps": result.steps},
        results / f"eval{rank}.pt",
    )
    shutdown()


@pytest.mark.slow
def test_two_rank_ddp_keeps_models_equal_and_evaluates_like_one_process(tmp_path):
    out_dir, result_dir = tmp_path / "run", tmp_path / "results"
    result_dir.mkdir()
    # fork: the ranks inherit the imported modules (spawning would re-import torch, timm and
    # smp in each, ~8 s on a small CPU); the parent runs torch single-threaded (conftest).
    args = (_free_port(), str(out_dir), str(result_dir))
    mp.start_processes(_worker, args=args, nprocs=WORLD, start_method="fork")

    states = [torch.load(result_dir / f"state{r}.pt") for r in range(WORLD)]
    assert any(k.startswith("teachers.1.") for k in states[0])
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), f"{key} differs between the ranks"
    # Rank 0 wrote the checkpoint: it holds the same weights, which training did change.
    ckpt = load_checkpoint(out_dir / "latest.pt")
    assert ckpt["step"] == 3
    for key, value in states[0].items():
        assert torch.equal(value, ckpt["state"][key]), key
    init = load_config("demo", OVERRIDES)
    fresh = _build_method(init, len(ckpt["classes"]), torch.device("cpu")).state_dict()
    for name in ("student.", "teachers.0.", "teachers.1."):
        conv = next(k for k in fresh if k.startswith(name) and k.endswith("conv1.weight"))
        assert not torch.equal(fresh[conv], states[0][conv]), f"{name} did not train"

    # Evaluation under two ranks: exactly the one-process confusion matrices (so every
    # validation pixel was scored exactly once), on both ranks.
    single = evaluate_checkpoint(out_dir / "latest.pt", models="all")
    assert set(single) == {"student", "teacher_a", "teacher_b"}
    for r in range(WORLD):
        ranked = torch.load(result_dir / f"eval{r}.pt")
        assert ranked["steps"] == 3
        for name, metrics in single.items():
            assert ranked["eval"][name] == metrics.confusion, (r, name)
    pixels = sum(sum(row) for row in single["student"].confusion)
    assert pixels > 0


def _sigterm_worker(rank: int, port: int, out_dir: str, result_dir: str) -> None:
    """A rank whose process (rank 1 only) gets SIGTERM during step 2; writes the message it
    stops with."""
    import signal

    from dualteacher.errors import TrainingStopped
    from dualteacher.methods.supervised import Supervised

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    original = Supervised.training_step

    def step(self, batch_x, batch_u, info):
        if rank == 1 and info.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch_x, batch_u, info)

    Supervised.training_step = step
    run = ["method.name=supervised", "train.steps=6", "train.eval_every=100"]
    cfg = load_config("demo", [*OVERRIDES, *run, f"train.out_dir={out_dir}"])
    try:
        trainer.train(cfg)
        message = "finished"
    except TrainingStopped as e:
        message = str(e)
    (Path(result_dir) / f"stop{rank}.txt").write_text(message)
    shutdown()


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Both ranks stop after step 2 with rank 0's checkpoint, and both say so (rank 1 said
    "resume from step None")."""
    out_dir, result_dir = tmp_path / "run", tmp_path / "results"
    result_dir.mkdir()
    args = (_free_port(), str(out_dir), str(result_dir))
    mp.start_processes(_sigterm_worker, args=args, nprocs=WORLD, start_method="fork")
    assert load_checkpoint(out_dir / "latest.pt")["step"] == 2
    for rank in range(WORLD):
        message = (result_dir / f"stop{rank}.txt").read_text()
        assert message.startswith("stopped by SIGTERM after step 2"), (rank, message)
        assert message.endswith("to resume from step 2."), (rank, message)
