"""The CodeParrot-DS pipeline as a Prefect flow: each stage a task, references between them."""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.artifacts import publish_data_report, publish_model_link, publish_training_report
from flows.config import PRESETS, PipelineConfig, build_config
from flows.routing import describe_route, resolve_training_route
from storage.store import Store
from tasks.common import open_run_store
from tasks.corpus import stream_corpus
from tasks.evaluate import SCATTER_PROMPT, evaluate_perplexity
from tasks.filtering import filter_by_keywords
from tasks.publish import publish_model
from tasks.tokenize import tokenize_to_shards
from tasks.tokenizer import train_tokenizer
from tasks.train import train_model, train_model_on_deployment

PresetName = Literal[tuple(PRESETS)]


@flow(name="codeparrot-ds-pipeline")
def codeparrot_pipeline(
    preset: PresetName | None = None,
    store_url: str | None = None,
    training_deployment: str | None = None,
    # A default instance lets the Prefect UI render every field's default in the run form.
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
) -> dict[str, Any]:
    """Stream, filter, tokenize, train, evaluate and publish; return where the model went.

    Every stage is found done in the store when its inputs, parameters and code are unchanged.

    Args:
        preset: A named preset to run instead of `config`: smoke (CPU, minutes) or course (GPU).
        store_url: Where stage outputs live (a folder or s3://bucket/prefix); empty uses the
            worker's $CODEPARROT_STORE, else ./codeparrot-store.
        training_deployment: Train on this deployment's workers (e.g. codeparrot-ds-train/gpu),
            or "local" to train in this flow run. Empty means the deployment's default route
            ($CODEPARROT_TRAINING_DEPLOYMENT; the pipeline deployments set the gpu pool).
        config: Every stage's settings (the defaults are the course's 124M run); ignored when
            a preset is chosen.
    """
    started = time.perf_counter()
    route, source = resolve_training_route(training_deployment, os.environ)
    get_run_logger().info(describe_route(route, source))
    if preset is not None:
        config = build_config(preset)
    store_url = open_run_store(store_url)
    corpus = stream_corpus(config.corpus, store_url)
    documents = filter_by_keywords(corpus, config.filter, store_url)
    tokenizer = train_tokenizer(documents, config.tokenizer, store_url)
    tokens = tokenize_to_shards(documents, tokenizer, config.tokenize, store_url)
    publish_data_report(corpus, documents, tokens)
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
        "documents": documents,
        "tokenizer": tokenizer,
        "tokens": tokens,
        "training": training,
        "evaluation": evaluation,
    }
    # The reports are made whether or not the quality gate promotes the model.
    publishing = publish_model(sources, config.publish, store_url, return_state=True)
    perplexity = evaluation.counts["perplexity"]
    store = Store(store_url)
    publish_training_report(store, training, evaluation, time.perf_counter() - started)
    published = publishing.result()  # a refused model fails the run here, with the reason
    model_uri = store.uri(published.prefix)
    publish_model_link(model_uri, perplexity)
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
    }


if __name__ == "__main__":
    codeparrot_pipeline()
