"""The pipeline's configuration: every stage's parameters, named presets, files and overrides."""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema, model_validator

from flows.presets import PRESETS
from storage.errors import UserError
from tasks.corpus.build import CorpusConfig
from tasks.evaluate.build import EvalConfig
from tasks.filter.build import FilterConfig
from tasks.publish.build import PublishConfig
from tasks.tokenize.build import TokenizeConfig
from tasks.tokenizer.build import TokenizerConfig
from tasks.train.config import ModelConfig, TrainConfig

__all__ = [
    "CUSTOM",
    "PRESETS",
    "ConfigError",
    "Overrides",
    "PipelineConfig",
    "build_config",
    "run_config",
]

# Not a preset: the run's own full config (its defaults are the course's 124M model).
CUSTOM = "custom"


class ConfigError(UserError, ValueError):
    """A config file, preset or override is invalid; the message names the field."""


# A config is a page of settings; anything larger is the wrong file.
MAX_CONFIG_BYTES = 1 << 20


class PipelineConfig(BaseModel):
    """Parameters of every stage of the pipeline."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    corpus: CorpusConfig = CorpusConfig()
    filter: FilterConfig = FilterConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    publish: PublishConfig = PublishConfig()

    @model_validator(mode="after")
    def _generation_leaves_room_for_prompts(self) -> PipelineConfig:
        # GPT-2 learns positions only up to its context, so a completion's prompt and its new
        # tokens must fit in it together.
        context = self.tokenize.context_length
        for name in ("max_new_tokens", "api_max_new_tokens", "humaneval_max_new_tokens"):
            value = getattr(self.evaluate, name)
            if value >= context:
                raise ValueError(
                    f"evaluate.{name} ({value}) must be below tokenize.context_length "
                    f"({context}): the prompt needs room in the model's context"
                )
        return self


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in, recursing into nested mappings."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a config needs none, and an alias bomb (a few
    lines whose aliases expand to billions of nodes) fills memory when the result is walked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config; write the value out", mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """A YAML text as plain data; aliases are refused (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_NoAliasLoader)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, JSON or TOML config file into a nested mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist or is not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES:,} bytes; is it a config?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text; give a YAML, JSON or TOML file"
        ) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = load_yaml(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml, .json or .toml")
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config file {path} is not valid: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of stage names to settings")
    return data


def _nested(dotted: str, value: Any, what: str) -> dict[str, Any]:
    """``("train.max_steps", 7)`` as ``{"train": {"max_steps": 7}}``."""
    parts = dotted.strip().split(".")
    if not all(part.strip() for part in parts):
        raise ConfigError(f"{what} must look like section.field=value")
    result: dict[str, Any] = value
    for part in reversed(parts):
        result = {part.strip(): result}
    return result


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn ``train.learning_rate=1e-3`` into ``{"train": {"learning_rate": 0.001}}``.

    The value is read as YAML, so numbers, booleans, lists and ``null`` work as expected.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    if len(assignment) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"override {assignment[:40]!r}... is over {MAX_CONFIG_BYTES:,} characters"
        )
    dotted, raw = assignment.split("=", 1)
    try:
        value = load_yaml(raw) if raw else ""
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ConfigError(
            f"override {assignment!r}: the value is not valid YAML ({problem}); quote it, "
            "e.g. --set 'section.field=\"text\"'"
        ) from None
    return _nested(dotted, value, f"override {assignment!r}")


def overrides_from_mapping(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"train.max_steps": 200}`` (or ``{"train": {"max_steps": 200}}``) into the
    nested mapping that is merged over a preset."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"overrides must be a mapping of section.field to value, e.g. "
            f'{{"train.max_steps": 200}}, not {type(overrides).__name__}'
        )
    data: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"override key {key!r} must be text like train.max_steps")
        data = deep_merge(data, _nested(key, value, f"override {key!r}"))
    return data


def override_keys() -> list[str]:
    """Every key a run's overrides may name: each section, and each section.field."""
    keys = []
    for section, field in PipelineConfig.model_fields.items():
        keys += [section, *(f"{section}.{name}" for name in field.annotation.model_fields)]
    return keys


# A run's overrides (or none) as its deployment's parameter schema describes them: the server
# refuses a misspelt key when the run is submitted, before a worker starts it, and lists the
# keys allowed (the values are checked when the run starts, with the settings' own messages).
# The schema names no type: with pydantic's anyOf of object and null, the UI would say only
# that the dict "is not valid under any of the given schemas", and with a type list it shows
# no editor at all. So what is neither a mapping nor null is refused by a "not".
Overrides = Annotated[
    dict[str, Any] | None,
    WithJsonSchema(
        {
            "propertyNames": {"type": "string", "enum": override_keys()},
            "additionalProperties": True,
            "not": {"type": ["string", "number", "boolean", "array"]},
        }
    ),
]


def describe_overrides(overrides: Mapping[str, Any] | None) -> str:
    """``train.max_steps=20, corpus.max_files=50`` for a log line, or ``none``."""
    items = [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]
    return ", ".join(items) or "none"


def format_validation_error(err: ValidationError) -> str:
    """One line per invalid field: where it is, what was given, what is allowed."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        given = (
            f" (got {item['input']!r})"
            if "input" in item and not isinstance(item["input"], dict)
            else ""
        )
        hint = _known_fields_hint(item["loc"]) if item["type"] == "extra_forbidden" else ""
        lines.append(f"  {where}: {item['msg']}{given}{hint}")
    return "invalid configuration:\n" + "\n".join(lines)


def _known_fields_hint(loc: tuple) -> str:
    """For a field that does not exist: the nearest valid names, else every valid name."""
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    section = ".".join(str(p) for p in loc[:-1])
    prefix = f"{section}." if section else ""
    names = sorted(model.model_fields)
    near = difflib.get_close_matches(str(loc[-1]), names, n=3, cutoff=0.6)
    if near:
        return "; did you mean " + " or ".join(f"{prefix}{name}" for name in near) + "?"
    return f"; the fields of {section or 'the config'} are " + ", ".join(names)


def preset_settings(preset: str) -> dict[str, Any]:
    """The settings a named preset changes from the defaults."""
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or {CUSTOM!r}"
        )
    return PRESETS[preset]


def validated(data: dict[str, Any]) -> PipelineConfig:
    """The config these settings make, or a ConfigError naming each invalid field."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from err


def build_config(
    preset: str | None = None, config_file: str | None = None, overrides: Sequence[str] = ()
) -> PipelineConfig:
    """Defaults, then a preset, then a config file, then ``section.field=value`` overrides.

    No preset, or ``custom``, starts from the defaults: the course's 124M model.
    """
    data: dict[str, Any] = {}
    if preset and preset != CUSTOM:
        data = deep_merge(data, preset_settings(preset))
    if config_file:
        data = deep_merge(data, read_config_file(config_file))
    for assignment in overrides:
        data = deep_merge(data, parse_override(assignment))
    return validated(data)


def _edited_sections(config: PipelineConfig | None) -> list[str]:
    """The sections in which a run's config differs from the defaults."""
    if config is None:
        return []
    defaults = PipelineConfig()
    return [
        name
        for name in type(config).model_fields
        if getattr(config, name) != getattr(defaults, name)
    ]


def run_config(
    preset: str, overrides: Mapping[str, Any] | None, config: PipelineConfig | None
) -> PipelineConfig:
    """What a pipeline run uses: a preset's settings, or with ``custom`` the run's ``config``,
    then the run's overrides on top."""
    if preset == CUSTOM:
        data = (config or PipelineConfig()).model_dump(mode="json")
    else:
        data = dict(preset_settings(preset))
        edited = _edited_sections(config)
        if edited:
            raise ConfigError(
                f"config was edited ({', '.join(edited)}) but preset is {preset!r}, which "
                f"ignores it; choose preset {CUSTOM!r} to run that config, or put the changes "
                "in overrides (for example train.max_steps: 800)"
            )
    return validated(deep_merge(data, overrides_from_mapping(overrides or {})))
