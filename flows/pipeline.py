"""The CodeParrot-DS pipeline as a Prefect flow: each stage a task, references between them."""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from flows.artifacts import publish_data_report, publish_model_link, publish_training_report
from flows.config import (
    CUSTOM,
    PRESETS,
    Overrides,
    PipelineConfig,
    describe_overrides,
    run_config,
)
from flows.data import DataConfig, run_data_stages
from flows.failures import install_one_line_failures
from flows.routing import describe_route, resolve_training_route
from tasks.evaluate.build import SCATTER_PROMPT
from tasks.evaluate.task import evaluate_perplexity
from tasks.publish.task import publish_model
from tasks.running import open_run_store, open_store
from tasks.train.config import check_hardware
from tasks.train.task import train_model, train_model_on_deployment

PresetName = Literal[(*PRESETS, CUSTOM)]
install_one_line_failures()
# What a run without a preset (outside a deployment that names one) uses: minutes on a CPU.
DEFAULT_PRESET = "smoke"


def deployment_preset() -> str | None:
    """The preset that this run's deployment names, for a run whose own preset is empty."""
    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context else None
    if deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment_id).parameters.get("preset")


@flow(name="codeparrot-ds-pipeline")
def codeparrot_pipeline(
    preset: PresetName | None = DEFAULT_PRESET,
    overrides: Overrides = None,
    store_url: str | None = None,
    training_deployment: str | None = None,
    dask_address: str | None = None,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Stream, filter, tokenize, train, evaluate and publish; return where the model went.

    Every stage is found done in the store when its inputs, parameters and code are unchanged.

    Args:
        preset: The settings to start from. smoke: a small model on local code, minutes on a
            CPU. ds: a larger model on data-science packages' examples, under 30 minutes on a
            CPU. course: the course's 124M model on its Hub data set, for a GPU. custom: the
            config below. Empty means the deployment's preset.
        overrides: Settings to change on top of the preset, each as section.field and its
            value, for example {"train.max_steps": 200}.
        store_url: Where stage outputs live: a folder or s3://bucket/prefix. Empty means the
            worker's $CODEPARROT_STORE, else ./codeparrot-store.
        training_deployment: Train on this deployment's workers (for example
            codeparrot-ds-train/gpu), or "local" to train in this flow run. Empty means the
            deployment's default route, $CODEPARROT_TRAINING_DEPLOYMENT (the gpu pool).
        dask_address: The Dask scheduler (tcp://host:port) whose workers filter and tokenize
            the corpus's groups; none runs them in this flow run's process. Empty means
            $CODEPARROT_DASK_ADDRESS, else a local cluster with one worker per core.
        config: Every stage's settings, used only with the preset custom. Empty means the
            defaults, which are the course's 124M model.
    """
    started = time.perf_counter()
    log = get_run_logger()
    route, source = resolve_training_route(training_deployment, os.environ)
    log.info(describe_route(route, source))
    chosen = preset or deployment_preset() or DEFAULT_PRESET
    config = run_config(chosen, overrides, config)
    origin = "" if preset else " (the run's preset was empty)"
    log.info("settings: preset %s%s; overrides: %s", chosen, origin, describe_overrides(overrides))
    if route is None:  # training here: a model too large for this machine stops now
        check_hardware(
            config.model,
            config.train,
            config.tokenizer.vocab_size,
            config.tokenize.context_length,
            torch.cuda.is_available(),
        )
    store_url = open_run_store(store_url)
    data = run_data_stages(
        DataConfig(
            corpus=config.corpus,
            filter=config.filter,
            tokenizer=config.tokenizer,
            tokenize=config.tokenize,
        ),
        store_url,
        dask_address,
        os.environ,
    )
    corpus, documents, tokenizer, tokens = (
        data[name] for name in ("corpus", "filter", "tokenizer", "tokenize")
    )
    publish_data_report(corpus, documents, tokens, data["groups"], data["by_group"])
    if route:
        training = train_model_on_deployment(
            tokens, tokenizer, config.model, config.train, store_url, route
        )
    else:
        training = train_model(tokens, tokenizer, config.model, config.train, store_url)
    evaluation = evaluate_perplexity(
        training, tokens, tokenizer, documents, config.evaluate, store_url
    )
    sources = {
        "corpus": corpus,
        "filter": documents,
        "tokenizer": tokenizer,
        "tokenize": tokens,
        "train": training,
        "evaluate": evaluation,
    }
    # The reports are made whether or not the quality gate promotes the model.
    publishing = publish_model(sources, config.publish, store_url, return_state=True)
    perplexity = evaluation.counts["perplexity"]
    store = open_store(store_url)
    publish_training_report(store, sources, time.perf_counter() - started)
    published = publishing.result()  # a refused model fails the run here, with the reason
    model_uri = store.uri(published.prefix)
    publish_model_link(model_uri, perplexity, store_url)
    samples = {s["prompt"]: s["completion"] for s in evaluation.counts["samples"]}
    return {
        "model_uri": model_uri,
        "perplexity": perplexity,
        "untrained_perplexity": evaluation.counts["untrained_perplexity"],
        "valid_rows_evaluated": evaluation.counts["valid_rows_evaluated"],
        "valid_rows": evaluation.counts["valid_rows"],
        "api_accuracy": evaluation.counts["api_accuracy"],
        "api_cases": evaluation.counts["api_cases"],
        "untrained_api_accuracy": evaluation.counts["untrained_api_accuracy"],
        "course_prompts": evaluation.counts["course_prompts"],
        "humaneval": evaluation.counts.get("humaneval"),
        "scatter_prompt": SCATTER_PROMPT,
        "scatter_completion": samples.get(SCATTER_PROMPT),
        "stages": {name: store.uri(ref.prefix) for name, ref in sources.items()},
        # Which stages this run found committed rather than built (publish always commits a
        # reference to its folder, found or built).
        "reused": {name: ref.reused for name, ref in {**sources, "publish": published}.items()},
    }


if __name__ == "__main__":
    codeparrot_pipeline()
