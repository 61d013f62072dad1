"""Two "nodes" on 127.0.0.1: ``torchrun --nnodes 2 --node_rank 0/1`` with gloo, one process
each. Resuming needs one checkpoint decision for all ranks: with one shared run directory both
resume from rank 0's checkpoint; with a directory per node the run stops at once on every rank
with an error naming the rank, host and directory (before: rank 0 resumed at step 2, rank 1
started at step 0, and the collectives no longer matched)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dualteacher.checkpoint import load_checkpoint
from dualteacher.config import load_config
from dualteacher.engine.trainer import train

from .conftest import TINY

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
}
RUN = [*TINY, "method.name=supervised", "train.eval_every=100", "train.ckpt_every=100"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(out_dirs: list[Path]) -> list[subprocess.CompletedProcess]:
    """``dualteacher train`` on two torchrun "nodes" (node r with run directory out_dirs[r])."""
    port = _free_port()
    procs = []
    for node, out in enumerate(out_dirs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "dualteacher", "train", "demo", *RUN,
               "--out", str(out)]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
            )
        )
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return done


@pytest.mark.slow
def test_two_nodes_resume_from_one_checkpoint_or_stop_with_a_clear_error(tmp_path):
    shared = tmp_path / "shared"
    first = train(load_config("demo", [*RUN, f"train.out_dir={shared}"]), stop_after=2)
    assert first.steps == 2 and load_checkpoint(shared / "latest.pt")["step"] == 2

    # each node its own run directory: node 1's holds no checkpoint
    own = tmp_path / "node1_local"
    for node, proc in enumerate(_two_nodes([shared, own])):
        assert proc.returncode != 0, (node, proc.stdout, proc.stderr)
        assert "rank 1 on host " in proc.stderr and f"{own}/latest.pt (no such file)" in (
            proc.stderr
        ), (node, proc.stderr)
        assert "file system all nodes share" in proc.stderr
    assert load_checkpoint(shared / "latest.pt")["step"] == 2  # nothing trained, nothing lost

    # one shared run directory: both ranks resume from step 2 and finish together
    node0, node1 = _two_nodes([shared, shared])
    assert node0.returncode == 0 and node1.returncode == 0, (node0.stderr, node1.stderr)
    assert "from step 2 (latest.pt); every one of the 2 ranks loaded it" in node0.stdout
    assert "done: 4 steps" in node0.stdout
    assert load_checkpoint(shared / "latest.pt")["step"] == 4
    rows = [json.loads(ln) for ln in (shared / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
