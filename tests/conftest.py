"""Shared fixtures: a tiny, seeded, CPU-only setup (32 px demo images, 2-image batches)."""

from __future__ import annotations

import pytest
import torch

from dualteacher.config import Config, load_config

TINY = [
    # The demo's own model loads bundled ImageNet weights; tests use the smaller scratch model
    # and the official (faithful) Dual Teacher mode.
    "model.name=unet-r18",
    "model.pretrained=null",
    "method.dual_teacher.mode=faithful",
    "data.demo.num_labeled=8",
    "data.demo.num_unlabeled=16",
    "data.demo.num_val=6",
    "data.demo.image_size=32",
    "data.crop_size=32",
    "data.batch_size=2",
    # the demo config's batch_size_u (4), no rescaling and lr 0.04 are tuned for its budget;
    # the tests keep the settings they were written with (faithful needs batch_size_u null)
    "data.batch_size_u=null",
    "data.scale_range=[0.75,1.5]",
    "optim.lr=0.02",
    "train.steps=4",
    "train.eval_every=2",
    "train.ckpt_every=2",
    "train.log_every=1",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.curves=false",  # curves.png costs a matplotlib render per validation
]


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is false)")


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    return load_config("demo", [*TINY, f"train.out_dir={tmp_path / 'run'}"])
