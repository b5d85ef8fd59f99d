"""Presets, config files, overrides and the errors for invalid values."""

from __future__ import annotations

import pytest

from flows.config import PRESETS, ConfigError, build_config, parse_override


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset):
    build_config(preset)


def test_course_preset_is_the_course_model():
    config = build_config("course")
    assert (config.model.n_layer, config.model.n_embd, config.model.n_head) == (12, 768, 12)
    train = config.train
    assert (train.batch_size, train.gradient_accumulation_steps) == (32, 8)
    assert (train.learning_rate, train.weight_decay, train.warmup_steps) == (5e-4, 0.1, 1000)
    assert train.lr_scheduler == "cosine"
    assert config.tokenize.context_length == 128


def test_override_values_are_typed():
    assert parse_override("train.max_steps=10") == {"train": {"max_steps": 10}}
    assert parse_override("filter.keywords=[a, b]") == {"filter": {"keywords": ["a", "b"]}}
    assert parse_override("train.max_steps=null") == {"train": {"max_steps": None}}


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 5\n  learning_rate: 0.01\n")
    config = build_config("smoke", str(path), ["train.max_steps=7"])
    assert config.train.max_steps == 7
    assert config.train.learning_rate == 0.01
    assert config.model.n_layer == PRESETS["smoke"]["model"]["n_layer"]


def test_invalid_value_names_field_and_value():
    with pytest.raises(ConfigError) as err:
        build_config("smoke", overrides=["train.learning_rate=-1"])
    assert "train.learning_rate" in str(err.value) and "-1" in str(err.value)


def test_misspelt_field_is_an_error():
    with pytest.raises(ConfigError, match="train.lerning_rate: Extra inputs are not permitted"):
        build_config(overrides=["train.lerning_rate=0.1"])


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        build_config(overrides=["model.n_head=5"])


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("train = [")
    with pytest.raises(ConfigError, match="not valid"):
        build_config(config_file=str(bad))
