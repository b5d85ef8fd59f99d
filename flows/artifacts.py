"""The run's artifacts in the Prefect UI, under stable keys so that each run adds a version."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.settings import PREFECT_API_URL

from flows import report
from storage.settings import Settings, current_settings
from storage.stages import StageRef, read_part
from storage.store import (
    Store,
    normalize_store_url,
)
from tasks.train.build import HISTORY_PART

DATA_REPORT_KEY = "codeparrot-ds-data-report"
LOSS_CURVE_KEY = "codeparrot-ds-train-loss-curve"
API_CURVE_KEY = "codeparrot-ds-train-api-accuracy-curve"
METRICS_KEY = "codeparrot-ds-evaluate-metrics"
SAMPLES_KEY = "codeparrot-ds-evaluate-samples"
MODEL_KEY = "codeparrot-ds-publish-model"


def publish_data_report(
    corpus: StageRef,
    documents: StageRef,
    tokens: StageRef,
    groups: dict[str, int],
    by_group: dict[str, dict] | None = None,
) -> None:
    """Files seen, skipped and kept (by kind of document and group), duplicates, tokens and
    shards, groups rebuilt."""
    create_markdown_artifact(
        report.data_report(corpus.counts, documents.counts, tokens.counts, groups, by_group),
        key=DATA_REPORT_KEY,
        description="What the corpus held and what the filter and tokenizer made of it",
    )


def publish_training_report(
    store: Store, sources: Mapping[str, StageRef], wall_seconds: float
) -> None:
    """The loss chart, the API-accuracy chart, the metrics table and the sample generations."""
    history = json.loads(read_part(store, sources["train"], HISTORY_PART))
    create_markdown_artifact(
        report.chart_markdown(
            "Loss by optimizer step", report.loss_curve_svg(history), report.loss_table(history)
        ),
        key=LOSS_CURVE_KEY,
        description="Train and validation loss by optimizer step",
    )
    if report.api_curve_points(history):
        create_markdown_artifact(
            report.chart_markdown(
                "API accuracy@1 by training tokens",
                report.api_curve_svg(history),
                report.api_table(history),
            ),
            key=API_CURVE_KEY,
            description="Held-out API accuracy@1 at each periodic validation, by training tokens",
        )
    create_table_artifact(
        report.metrics_rows(sources, wall_seconds),
        key=METRICS_KEY,
        description="Loss, perplexity, throughput and wall time of this run; where each stage "
        "came from",
    )
    create_markdown_artifact(
        report.samples_markdown(sources["evaluate"].counts["samples"]),
        key=SAMPLES_KEY,
        description="Completions of the fixed prompts by the trained model",
    )


# Settings of an S3 store that hold no secret, so that the "Try it" command can carry them.
S3_SETTINGS = ("s3_endpoint_url", "s3_region", "s3_addressing_style")


def command_program() -> str:
    """How to start the command line from the repository root with this interpreter."""
    script = Path(sys.executable).parent / "codeparrot-ds"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m flows.cli"
    with contextlib.suppress(ValueError):  # outside the working folder: the absolute path
        return shlex.quote(str(script.relative_to(Path.cwd())))
    return shlex.quote(str(script))


def store_settings(store_url: str, environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """(the settings the command needs to read the store, a note on what it cannot carry)."""
    if normalize_store_url(store_url).startswith("file://"):
        return {}, ""
    current = current_settings(environ)
    settings = {
        Settings.variable(name): str(getattr(current, name))
        for name in S3_SETTINGS
        if environ.get(Settings.variable(name))
    }
    if environ.get("AWS_DEFAULT_REGION"):
        settings["AWS_DEFAULT_REGION"] = environ["AWS_DEFAULT_REGION"]
    if block := current.s3_credentials_block:
        settings[Settings.variable("s3_credentials_block")] = block
        settings["PREFECT_API_URL"] = PREFECT_API_URL.value() or ""
        return settings, ""
    return settings, (
        "The store's credentials are not in the command: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) first."
    )


def publish_model_link(model_uri: str, perplexity: float, store_url: str) -> None:
    """A link to the published model folder, with a command that tries it."""
    settings, note = store_settings(store_url, os.environ)
    command = report.try_it_command(model_uri, command_program(), settings)
    create_link_artifact(
        model_uri,
        link_text=model_uri,
        key=MODEL_KEY,
        description=report.model_markdown(model_uri, perplexity, command, note),
    )
