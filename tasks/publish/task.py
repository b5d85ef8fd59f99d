"""The publish stage's Prefect task."""

from __future__ import annotations

from functools import partial

from storage.stages import StageRef
from tasks.publish import PUBLISH
from tasks.publish.build import (
    ModelNotPromotedError,
    PublishConfig,
    current_model_counts,
    promotion_refusal,
    publish_folder,
    publish_spec,
    set_latest,
)
from tasks.running import commit_stage, open_store, stage_logger, stage_task


# Its output is keyed as any stage's, but the task always runs: it decides whether LATEST moves
# to this model (the quality gate) and moves it.
@stage_task(PUBLISH)
def publish_model(sources: dict[str, StageRef], config: PublishConfig, store_url: str) -> StageRef:
    """Publish the trained model with its tokenizer and model card; move LATEST to it."""
    log = stage_logger()
    store = open_store(store_url)
    build = partial(publish_folder, store, sources, config, log=log)
    ref = commit_stage(PUBLISH, store_url, publish_spec(sources, config), build, log)
    current = current_model_counts(store, config.model_name, log)
    refusal = promotion_refusal(ref.counts, current, config.tolerance)
    if refusal and not config.force:
        raise ModelNotPromotedError(
            f"{refusal}. The model is stored at {store.uri(ref.prefix)}; LATEST still points "
            "at the current one. Set publish.force=true to promote it anyway"
        )
    if refusal:
        log.warning("%s; promoted anyway (publish.force)", refusal)
    set_latest(store, config.model_name, ref.key)
    log.info("published %s", store.uri(ref.prefix))
    return ref
