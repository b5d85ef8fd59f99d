"""The evaluate stage's Prefect task."""

from __future__ import annotations

from functools import partial

from storage.stages import StageRef
from tasks.evaluate import EVALUATE
from tasks.evaluate.build import EvalConfig, evaluate_model, evaluate_spec
from tasks.running import commit_stage, open_store, stage_logger, stage_task


@stage_task(EVALUATE)
def evaluate_perplexity(
    training: StageRef,
    tokens: StageRef,
    tokenizer: StageRef,
    documents: StageRef,
    config: EvalConfig,
    store_url: str,
) -> StageRef:
    """Validation perplexity (plain loss), API accuracy on held-out code, the course's prompts
    and sample completions of the trained model, each beside an untrained model's."""
    log = stage_logger()
    store = open_store(store_url)
    build = partial(evaluate_model, store, training, tokens, tokenizer, documents, config, log=log)
    spec = evaluate_spec(training, tokens, tokenizer, documents, config)
    return commit_stage(EVALUATE, store_url, spec, build, log)
