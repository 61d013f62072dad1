"""Issue 18: numeric config values and command-line numbers are checked when they are read,
with one line naming the key; a device this machine lacks is one line too."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from dualteacher.config import (
    CHOICES,
    FREE_VALUES,
    VALUE_RANGES,
    Config,
    check_values,
    load_config,
)
from dualteacher.errors import ConfigError

from .test_reliability import cli

BAD_VALUES = {
    # override: what the one-line error must say
    "train.steps=-5": "train.steps=-5 must be at least 1",
    "data.batch_size=0": "data.batch_size=0 must be at least 1",  # not optim.ref_batch_size
    "data.crop_size=0": "data.crop_size=0 must be at least 1",  # a traceback before
    "method.conf_thresh=2": "method.conf_thresh=2 must be in [0, 1]",
    "optim.lr=nan": "optim.lr=nan must be a finite number",
    "optim.lr=-0.1": "optim.lr=-0.1 must be greater than 0",
    "data.scale_range=[2.0,1.0]": "must be (low, high) with low <= high",
    "optim.betas=[0.9,1.0]": "optim.betas=[0.9,1] must be each in [0, 1)",
    "train.max_minutes=inf": "must be a finite number",
    "model.output_stride=12": "must be one of 8, 16",
    "train.device=gpu": "train.device=gpu must be auto, cpu, cuda, cuda:N or mps",
}


@pytest.mark.parametrize("override", list(BAD_VALUES))
def test_bad_numeric_values_are_refused_at_load_naming_the_key(override, capsys, tmp_path):
    key = override.split("=")[0]
    code, _, err = cli(capsys, "train", "demo", override, "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: bad value for config key '{key}' in override '{override}': ")
    assert BAD_VALUES[override] in err
    assert not (tmp_path / "run").exists()  # nothing was built or written


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  eval_every: 0\n")
    with pytest.raises(ConfigError, match=rf"'train.eval_every' in {path}: .* at least 1"):
        load_config(path)


def test_every_numeric_key_has_a_range():
    """A new numeric config key needs its entry in VALUE_RANGES (or FREE_VALUES / CHOICES)."""

    def numeric(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                yield from numeric(t, f"{prefix}{f.name}.")
                continue
            args = set(typing.get_args(t)) | {t}
            inner = {a for x in args for a in (typing.get_args(x) or (x,))}
            if inner & {int, float} and bool not in inner:
                yield prefix + f.name

    keys = set(numeric(Config))
    listed = set(VALUE_RANGES) | set(FREE_VALUES) | set(CHOICES)
    assert keys - listed == set(), "numeric keys without a range"
    assert listed - keys == set(), "ranges of keys that do not exist"


def test_check_values_catches_configs_built_in_python():
    cfg = load_config("demo")
    check_values(cfg)  # the defaults and built-in configs are valid
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=0))
    with pytest.raises(ConfigError, match="train.steps=0 must be at least 1"):
        check_values(bad)


CLI_NUMBERS = {
    # arguments: the usage error
    ("predict", "ck.pt", "img.png", "--out", "o", "--alpha", "2"): "--alpha: 2 must be between 0",
    ("predict", "ck.pt", "img.png", "--out", "o", "--batch-size", "0"): "--batch-size: 0 must",
    ("compare", "demo", "--methods", "supervised", "--seeds", "0"): "--seeds: 0 must be at least",
    ("compare", "demo", "--methods", "supervised", "--minutes", "nan"): "--minutes: nan must",
    ("eval", "ck.pt", "--samples", "-1"): "--samples: -1 must be at least 0",
    ("bench", "--steps", "0"): "--steps: 0 must be at least 1",
}


@pytest.mark.parametrize("args", list(CLI_NUMBERS))
def test_command_line_numbers_are_checked_before_anything_runs(args, capsys):
    code, _, err = cli(capsys, *args)
    assert code == 2 and CLI_NUMBERS[args] in err and "Traceback" not in err


def test_predict_api_checks_its_numbers():
    from dualteacher.serving.predict import predict

    with pytest.raises(ConfigError, match="alpha=2"):
        predict("ck.pt", ["x.png"], "out", alpha=2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        predict("ck.pt", ["x.png"], "out", batch_size=0)


def test_cuda_device_without_a_gpu_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, _, err = cli(capsys, "train", "demo", "train.device=cuda", "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "train.device=cuda, but this process sees no usable CUDA GPU" in err
    assert "train.device=cpu" in err
