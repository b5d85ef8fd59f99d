"""Every stage, in pipeline order: where the docs' stage table and the tests' stage lists come
from."""

from __future__ import annotations

from tasks.corpus import CORPUS
from tasks.evaluate import EVALUATE
from tasks.filter import FILTER
from tasks.publish import PUBLISH
from tasks.stage import Stage
from tasks.tokenize import TOKENIZE
from tasks.tokenizer import TOKENIZER
from tasks.train import TRAIN

STAGES: tuple[Stage, ...] = (CORPUS, FILTER, TOKENIZER, TOKENIZE, TRAIN, EVALUATE, PUBLISH)


def stage_named(name: str) -> Stage:
    """The stage called ``name``."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; the stages are {[s.name for s in STAGES]}")


def stage_table() -> str:
    """The stages as a Markdown table: the name a user meets everywhere, and where it lives."""
    rows = [
        "| stage | Prefect tasks | store folders | config sections | code |",
        "|---|---|---|---|---|",
    ]
    for stage in STAGES:
        tasks = ", ".join(f"`{name}`" for name in stage.task_names)
        folders = ", ".join(f"`{folder}/`" for folder in stage.folders)
        sections = ", ".join(f"`{section}`" for section in stage.config_sections)
        rows.append(f"| {stage.name} | {tasks} | {folders} | {sections} | `tasks/{stage.name}/` |")
    return "\n".join(rows)
