"""Presets, config files, overrides and the errors for invalid values."""

from __future__ import annotations

import re

import pytest

from flows.config import (
    CUSTOM,
    PRESETS,
    ConfigError,
    build_config,
    describe_overrides,
    override_keys,
    parse_override,
    run_config,
)
from tasks.train.config import NeedsGpuError, check_hardware, parameter_count


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset):
    build_config(preset)


def test_the_presets_keywords_start_from_the_filters_default():
    from flows.presets import COURSE_KEYWORDS
    from tasks.filter.build import DEFAULT_KEYWORDS

    assert COURSE_KEYWORDS == DEFAULT_KEYWORDS


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


def test_a_bare_no_for_mixed_precision_means_no():
    # YAML reads `no` as false; the setting's values are words.
    assert build_config("ds", overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        build_config("ds", overrides=["train.mixed_precision=yes"])


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


def test_generation_must_leave_room_for_the_prompt_in_the_context():
    with pytest.raises(
        ConfigError, match=r"evaluate.humaneval_max_new_tokens \(128\) must be below"
    ):
        build_config("ds", overrides=["evaluate.humaneval_max_new_tokens=128"])
    build_config("ds", overrides=["evaluate.humaneval_max_new_tokens=127"])


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("train = [")
    with pytest.raises(ConfigError, match="not valid"):
        build_config(config_file=str(bad))


def test_an_override_that_is_not_yaml_is_one_clear_line(tmp_path, capsys):
    from flows.cli import main

    assert main(["run", "--set", "train.key_tokens=[plt, pd", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid YAML" in err and "train.key_tokens" in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
        ("broken.yaml", b"train: [1, 2\n", "is not valid"),
        ("broken.toml", b"[train\n", "is not valid"),
        ("broken.json", b"{", "is not valid"),
    ],
)
def test_a_config_file_that_does_not_parse_is_one_clear_line(
    tmp_path, capsys, name, content, message
):
    from flows.cli import main

    path = tmp_path / name
    path.write_bytes(content)
    assert main(["run", "--config", str(path), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err


# Nine levels would be 9**9 nodes once walked; three show the shape without the risk.
ALIAS_BOMB = 'a: &a ["lol", "lol", "lol"]\nb: &b [*a, *a, *a]\ntrain: {key_tokens: [*b, *b, *b]}\n'


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    from flows.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert main(["run", "--config", str(path), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aliases" in err and str(path) in err
    with pytest.raises(ConfigError, match="aliases"):
        parse_override("train.key_tokens=[&a plt, *a, *a]")


def test_an_oversized_override_is_refused():
    with pytest.raises(ConfigError, match="over 1,048,576 characters"):
        parse_override("train.key_tokens=" + "x" * (1 << 20))


def test_every_stage_is_declared_once_with_its_config_sections():
    from flows.config import PipelineConfig
    from tasks.registry import STAGES

    sections = [section for stage in STAGES for section in stage.config_sections]
    assert sections == list(PipelineConfig.model_fields)  # each section once, in pipeline order
    assert len({stage.name for stage in STAGES}) == len(STAGES)


def test_a_run_is_a_preset_with_overrides_on_top():
    config = run_config("smoke", {"train.max_steps": 20, "corpus": {"max_files": 50}}, None)
    assert config.train.max_steps == 20
    assert config.corpus.max_files == 50
    assert config.model.n_layer == PRESETS["smoke"]["model"]["n_layer"]
    assert describe_overrides({"train.max_steps": 20}) == "train.max_steps=20"
    assert describe_overrides(None) == "none"


def test_custom_runs_the_given_config_with_overrides():
    given = build_config("smoke")
    config = run_config(CUSTOM, {"train.learning_rate": 0.01}, given)
    assert config.model == given.model
    assert config.train.learning_rate == 0.01
    # No config with custom: the defaults, which are the course's 124M shape.
    assert run_config(CUSTOM, None, None).model.n_embd == 768


def test_an_edited_config_with_a_preset_that_ignores_it_is_an_error():
    edited = build_config("custom").model_copy(
        update={"train": build_config("custom").train.model_copy(update={"max_steps": 7})}
    )
    with pytest.raises(ConfigError, match=r"config was edited \(train\) but preset is 'smoke'"):
        run_config("smoke", None, edited)
    # The form's untouched default (the defaults) and no config at all are fine.
    assert run_config("smoke", None, build_config("custom")).train.max_steps == 600
    assert run_config("smoke", None, None).train.max_steps == 600


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.lerning_rate": 0.1}, "train.lerning_rate: Extra inputs are not permitted"),
        ({"train.max_stepz": 5}, "did you mean train.max_steps?"),
        ({"model.zzz": 5}, "the fields of model are dropout, n_embd, n_head, n_layer"),
        ({"trian.max_steps": 5}, "did you mean train?"),
        ({"train.max_steps": 0}, "train.max_steps: Input should be greater than or equal to 1"),
        ({"train..max_steps": 1}, "must look like section.field"),
        ([("train.max_steps", 1)], "overrides must be a mapping"),
    ],
)
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_config("smoke", overrides, None)


def test_an_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of"):
        run_config("tiny", None, None)


def test_a_large_model_needs_a_gpu_unless_allowed():
    course = build_config("course")
    vocab, context = course.tokenizer.vocab_size, course.tokenize.context_length
    assert parameter_count(course.model, vocab, context) == pytest.approx(124e6, rel=0.01)
    with pytest.raises(NeedsGpuError, match="124M parameters and this machine has no GPU"):
        check_hardware(course.model, course.train, vocab, context, has_gpu=False)
    check_hardware(course.model, course.train, vocab, context, has_gpu=True)
    allowed = course.train.model_copy(update={"allow_cpu": True})
    check_hardware(course.model, allowed, vocab, context, has_gpu=False)
    smoke = build_config("smoke")
    check_hardware(smoke.model, smoke.train, 4096, 128, has_gpu=False)


def test_the_pipelines_parameter_schema_refuses_an_override_key_that_names_no_setting():
    """What the Prefect server checks at Submit, before any worker starts the run."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows.pipeline import codeparrot_pipeline

    schema = parameter_schema(codeparrot_pipeline.fn).model_dump()
    every_key = {key: None for key in override_keys()}
    assert {"train", "train.max_steps", "corpus.kinds", "publish.model_name"} <= set(every_key)
    for overrides in (every_key, {"train": {"max_steps": 5}}, {}, None):
        validate({"overrides": overrides}, schema, raise_on_error=True)
    with pytest.raises(ValidationError) as refused:
        validate({"overrides": {"train.max_stepz": 5}}, schema, raise_on_error=True)
    assert "'train.max_stepz' is not one of ['corpus', 'corpus.source'," in str(refused.value)
    assert "'train.max_steps'" in str(refused.value)
    for not_a_mapping in (3, "train.max_steps=5", [{"train.max_steps": 5}], True):
        with pytest.raises(ValidationError):
            validate({"overrides": not_a_mapping}, schema, raise_on_error=True)
    # Every section.field key it lets through is a setting: the preset's own values, set by
    # those keys, give the preset back.
    smoke = build_config("smoke").model_dump(mode="json")
    same = {
        key: smoke[key.split(".")[0]][key.split(".")[1]] for key in override_keys() if "." in key
    }
    assert run_config("smoke", same, None) == build_config("smoke")
