import pytest

from dualteacher.config import (
    Config,
    DualTeacherMode,
    EvalMode,
    diff,
    load_config,
    to_dict,
    to_yaml,
)
from dualteacher.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.steps=7", "data.scale_range=[0.5,1.0]", "eval.mode=sliding"])
    assert isinstance(cfg, Config)
    assert cfg.train.steps == 7
    assert cfg.data.scale_range == (0.5, 1.0)
    assert cfg.eval.mode is EvalMode.sliding
    assert cfg.method.dual_teacher.mode is DualTeacherMode.faithful  # as the official code


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.stepz=3"])
    msg = str(e.value)
    assert "unknown config key 'train.stepz'" in msg
    assert "train.steps" in msg  # suggestion and list of valid keys
    assert "train.eval_every" in msg


def test_unknown_section_and_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config(None, ["trainer.steps=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: unet-r18\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "model.nmae" in str(e.value) and str(bad) in str(e.value)
    assert "model.name" in str(e.value)


def test_wrong_type_and_bad_choice():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="faithful"):
        load_config(None, ["method.dual_teacher.mode=exact"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_builtin_config_by_name_and_roundtrip(tmp_path):
    cfg = load_config("demo")
    assert cfg.data.name == "demo" and cfg.model.name == "unet-effl0"
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)
    assert diff(cfg, again) == {}
    changed = load_config(path, ["optim.lr=0.5"])
    assert diff(cfg, changed) == {"optim.lr": (cfg.optim.lr, 0.5)}


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/config.yaml")
