"""The tokenize stage's Prefect tasks: one per corpus group, then the join that lists them."""

from __future__ import annotations

from storage.shards import member_drops
from storage.stages import StageRef, StageWriter
from tasks.join import join_spec
from tasks.running import commit_stage, open_store, stage_logger, stage_task
from tasks.tokenize import TOKENIZE
from tasks.tokenize.build import TokenizeConfig, tokenize_documents, tokenize_spec
from tasks.tokenize.join import join_tokens
from tasks.tokenizer.build import shared_stage_tokenizer


@stage_task(TOKENIZE, group=True)
def tokenize_group(
    documents: StageRef,
    deduplicated: StageRef,
    tokenizer: StageRef,
    config: TokenizeConfig,
    store_url: str,
) -> StageRef:
    """Tokenize one group's documents, less the duplicates that ``deduplicated`` (the whole
    corpus's dedup) drops from it, into fixed-length rows in Arrow shards."""
    log = stage_logger()
    store = open_store(store_url)
    every = max(1, 20_000 // config.batch_size)
    calls = {"n": 0}
    drops_sha256, skip = member_drops(store, deduplicated, documents)

    def progress(split: str, docs: int, rows: int) -> None:
        calls["n"] += 1
        if calls["n"] % every == 0:
            log.info("tokenize %s %s: %d files, %d rows", documents.key, split, docs, rows)

    def build(writer: StageWriter) -> dict[str, int]:
        loaded = shared_stage_tokenizer(store, tokenizer)
        return tokenize_documents(store, documents, loaded, config, writer, progress, skip)

    spec = tokenize_spec(documents, tokenizer, config, drops_sha256)
    return commit_stage(TOKENIZE, store_url, spec, build, log)


@stage_task(TOKENIZE)
def join_token_groups(
    groups: list[StageRef],
    documents: StageRef,
    tokenizer: StageRef,
    config: TokenizeConfig,
    store_url: str,
) -> StageRef:
    """The corpus's token rows: every group's shards, in corpus order, as ``tokenize/{key}``."""
    spec = join_spec(TOKENIZE, groups, config, {"filter": documents, "tokenizer": tokenizer})
    log = stage_logger()
    return commit_stage(TOKENIZE, store_url, spec, lambda w: join_tokens(groups, w), log)
