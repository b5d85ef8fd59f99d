"""The corpus stage's Prefect task."""

from __future__ import annotations

from storage.stages import StageRef
from tasks.corpus.build import CORPUS, CorpusConfig, corpus_spec, take_snapshot
from tasks.running import commit_stage, open_store, stage_logger, stage_task


@stage_task(CORPUS)
def stream_corpus(config: CorpusConfig, store_url: str) -> StageRef:
    """Snapshot the configured corpus source into the store."""
    snapshot = take_snapshot(config, open_store(store_url))
    spec = corpus_spec(config, snapshot)
    return commit_stage(CORPUS, store_url, spec, snapshot.write, stage_logger())
