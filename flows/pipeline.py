"""The CodeParrot-DS pipeline as a Prefect flow: each stage a task, references between them."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import PipelineConfig
from storage.results import ensure_result_storage
from storage.store import DEFAULT_STORE_URL, Store, normalize_store_url
from tasks.corpus import stream_corpus
from tasks.evaluate import SCATTER_PROMPT, evaluate_perplexity
from tasks.filtering import filter_by_keywords
from tasks.publish import publish_model
from tasks.tokenize import tokenize_to_shards
from tasks.tokenizer import train_tokenizer
from tasks.train import train_model


@flow(name="codeparrot-ds-pipeline")
def codeparrot_pipeline(
    # A default instance lets the Prefect UI render every field's default in the run form.
    config: PipelineConfig = PipelineConfig(),  # noqa: B008
    store_url: str = DEFAULT_STORE_URL,
) -> dict[str, Any]:
    """Stream, filter, tokenize, train, evaluate and publish; return where the model went.

    Every stage is found done in the store when its inputs, parameters and code are unchanged.
    """
    store_url = normalize_store_url(store_url)
    Store(store_url).check_access()
    ensure_result_storage()
    corpus = stream_corpus(config.corpus, store_url)
    documents = filter_by_keywords(corpus, config.filter, store_url)
    tokenizer = train_tokenizer(documents, config.tokenizer, store_url)
    tokens = tokenize_to_shards(documents, tokenizer, config.tokenize, store_url)
    training = train_model(tokens, tokenizer, config.model, config.train, store_url)
    evaluation = evaluate_perplexity(training, tokens, tokenizer, config.evaluate, store_url)
    sources = {
        "corpus": corpus,
        "documents": documents,
        "tokenizer": tokenizer,
        "tokens": tokens,
        "training": training,
        "evaluation": evaluation,
    }
    published = publish_model(sources, config.publish, store_url)
    samples = {s["prompt"]: s["completion"] for s in evaluation.counts["samples"]}
    return {
        "model_uri": published.uri,
        "perplexity": evaluation.counts["perplexity"],
        "untrained_perplexity": evaluation.counts["untrained_perplexity"],
        "scatter_prompt": SCATTER_PROMPT,
        "scatter_completion": samples.get(SCATTER_PROMPT),
        "stages": {name: ref.uri for name, ref in sources.items()},
    }


if __name__ == "__main__":
    codeparrot_pipeline()
