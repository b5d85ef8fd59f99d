"""The filter stage's Prefect tasks: one per corpus group, then the join that dedups them."""

from __future__ import annotations

from functools import partial

from storage.stages import StageRef, StageWriter
from tasks.corpus.build import read_settings
from tasks.corpus.read import iter_documents, snapshot_config
from tasks.filter import FILTER
from tasks.filter.build import FilterConfig, filter_documents, filter_spec
from tasks.filter.join import deduplicate
from tasks.join import join_spec
from tasks.running import commit_stage, open_store, stage_logger, stage_task


@stage_task(FILTER, group=True)
def filter_group(corpus: StageRef, group: dict, config: FilterConfig, store_url: str) -> StageRef:
    """Filter one group of the corpus: keep data-science files, split them, index them for
    dedup; write Parquet shards to ``filter/groups/{key}``."""
    log = stage_logger()
    store = open_store(store_url)
    name = str(group["name"])

    def report(counts: dict[str, int]) -> None:
        log.info("filter group %s: %d files read, %d kept", name, counts["read"], counts["kept"])

    def build(writer: StageWriter) -> dict[str, int]:
        documents = partial(iter_documents, store, corpus, group=name)
        return filter_documents(documents, config, writer, report)

    settings = read_settings(snapshot_config(store, corpus))
    return commit_stage(FILTER, store_url, filter_spec(settings, group, config), build, log)


@stage_task(FILTER)
def deduplicate_groups(groups: list[StageRef], config: FilterConfig, store_url: str) -> StageRef:
    """Drop exact and near duplicates across the corpus's filtered groups (from their small
    indexes) and list the groups as one output: ``filter/{key}``."""
    store = open_store(store_url)
    spec = join_spec(FILTER, groups, config, {})
    log = stage_logger()
    return commit_stage(
        FILTER, store_url, spec, lambda writer: deduplicate(store, groups, config, writer), log
    )
