"""The run's artifacts in the Prefect UI, under stable keys so that each run adds a version."""

from __future__ import annotations

import json

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows import report
from storage.stages import StageRef, read_part
from storage.store import Store
from tasks.training_run import HISTORY_PART

DATA_REPORT_KEY = "codeparrot-ds-data-report"
LOSS_CURVE_KEY = "codeparrot-ds-loss-curve"
API_CURVE_KEY = "codeparrot-ds-api-accuracy-curve"
METRICS_KEY = "codeparrot-ds-metrics"
SAMPLES_KEY = "codeparrot-ds-samples"
MODEL_KEY = "codeparrot-ds-model"


def publish_data_report(corpus: StageRef, documents: StageRef, tokens: StageRef) -> None:
    """Files seen, skipped and kept, duplicates, tokens and shards."""
    create_markdown_artifact(
        report.data_report(corpus.counts, documents.counts, tokens.counts),
        key=DATA_REPORT_KEY,
        description="What the corpus held and what the filter and tokenizer made of it",
    )


def publish_training_report(
    store: Store, training: StageRef, evaluation: StageRef, wall_seconds: float
) -> None:
    """The loss curve, the API-accuracy curve, the metrics table and the sample generations."""
    history = json.loads(read_part(store, training, HISTORY_PART))
    create_image_artifact(
        report.svg_data_url(report.loss_curve_svg(history)),
        key=LOSS_CURVE_KEY,
        description="Train and validation loss by optimizer step",
    )
    if report.api_curve_points(history):
        create_image_artifact(
            report.svg_data_url(report.api_curve_svg(history)),
            key=API_CURVE_KEY,
            description="Held-out API accuracy@1 at each periodic validation, by training tokens",
        )
    create_table_artifact(
        report.metrics_rows(training.counts, evaluation.counts, wall_seconds),
        key=METRICS_KEY,
        description="Loss, perplexity, throughput and wall time of this run",
    )
    create_markdown_artifact(
        report.samples_markdown(evaluation.counts["samples"]),
        key=SAMPLES_KEY,
        description="Completions of the fixed prompts by the trained model",
    )


def publish_model_link(model_uri: str, perplexity: float) -> None:
    """A link to the published model folder, with how to use it."""
    create_link_artifact(
        model_uri,
        link_text=model_uri,
        key=MODEL_KEY,
        description=report.model_markdown(model_uri, perplexity),
    )
