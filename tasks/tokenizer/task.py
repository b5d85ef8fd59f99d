"""The tokenizer stage's Prefect task."""

from __future__ import annotations

from functools import partial

from storage.stages import StageRef
from tasks.running import commit_stage, open_store, stage_logger, stage_task
from tasks.tokenizer import TOKENIZER
from tasks.tokenizer.build import TokenizerConfig, build_tokenizer, tokenizer_spec, training_texts


@stage_task(TOKENIZER)
def train_tokenizer(documents: StageRef, config: TokenizerConfig, store_url: str) -> StageRef:
    """Train a byte-level BPE tokenizer on the training split, or load the configured one."""
    store = open_store(store_url)
    spec = tokenizer_spec(documents, config, store.credentials)
    texts = training_texts(store, documents, config)
    build = partial(build_tokenizer, config, texts, credentials=store.credentials)
    return commit_stage(TOKENIZER, store_url, spec, build, stage_logger())
