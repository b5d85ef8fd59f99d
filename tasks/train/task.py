"""The train stage's Prefect tasks: train GPT-2 from scratch on the token shards.

Training runs in this task's process, in one launched process per GPU, or on the workers of
a training deployment (the GPU pool); all three commit the same output at the same key.
"""

from __future__ import annotations

import contextlib
import time
from uuid import UUID

import torch
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.sorting import ArtifactSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Cancelling, State

from storage.errors import RunFailure
from storage.stages import StageRef, StageWriter, committed_ref, load_manifest
from tasks.running import commit_stage, open_store, stage_logger, stage_task
from tasks.train import TRAIN
from tasks.train.build import train_spec, training_request
from tasks.train.config import ModelConfig, TrainConfig, check_hardware
from tasks.train.launch import build_training
from tasks.train.progress import PROGRESS_KEY, ProgressArtifact

# Seconds between polls of a training run on another worker.
DEPLOYMENT_POLL_SECONDS = 5
# The pipeline's log relays the training run's progress in steps of this many percent.
RELAY_PERCENT = 10
# The message of the state a pipeline run sets on its training run as it stops.
CANCELLED_BY_PIPELINE = "the pipeline run that started it stopped"


@stage_task(TRAIN)
def train_model(
    tokens: StageRef,
    tokenizer: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    store_url: str,
) -> StageRef:
    """Train GPT-2 from scratch with the Accelerate loop; the model lands in the store.

    A rerun after a crash resumes from the newest checkpoint the crashed run committed.
    """
    log = stage_logger()

    def build(writer: StageWriter) -> dict:
        check_hardware(
            model_config,
            train_config,
            tokens.counts["vocab_size"],
            tokens.counts["context_length"],
            torch.cuda.is_available(),
        )
        on_progress = ProgressArtifact.for_current_run(log)
        store = open_store(store_url)
        return build_training(
            store, tokens, tokenizer, model_config, train_config, writer, log, on_progress
        )

    spec = train_spec(tokens, tokenizer, model_config, train_config)
    return commit_stage(TRAIN, store_url, spec, build, log)


class TrainingRunError(RunFailure, RuntimeError):
    """The training deployment is missing, or its run did not complete."""


def read_deployment(name: str) -> DeploymentResponse:
    """The deployment called ``flow-name/deployment-name`` on the current Prefect server."""
    if name.count("/") != 1:
        raise TrainingRunError(
            f"training_deployment {name!r} must look like flow-name/deployment-name, "
            "e.g. codeparrot-ds-train/gpu"
        )
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


@stage_task(TRAIN)
def train_model_on_deployment(
    tokens: StageRef,
    tokenizer: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    store_url: str,
    deployment: str,
) -> StageRef:
    """Train on the workers of a deployment (the GPU pool) and wait for the model.

    Only references travel: the training run reads the shards from the store and writes the
    model there, where this task finds it. A model already in the store starts no run.
    """
    log = stage_logger()
    store = open_store(store_url)
    spec = train_spec(tokens, tokenizer, model_config, train_config)
    manifest = load_manifest(store, spec.stage, spec.key)
    reused = manifest is not None
    if manifest is None:
        log.info("training on deployment %s; waiting for its run", deployment)
        try:
            found = read_deployment(deployment)
        except ObjectNotFound:
            raise TrainingRunError(
                f"there is no deployment {deployment!r}; deploy deployments/prefect.yaml "
                "(`prefect deploy --prefect-file deployments/prefect.yaml --all`) or leave "
                "training_deployment empty to train in this run"
            ) from None
        flow_run = run_deployment(  # timeout 0: start it, then follow it here
            found.id,
            parameters=training_request(tokens, tokenizer, model_config, train_config, store_url),
            timeout=0,
        )
        state = follow_training_run(flow_run.id, flow_run.name, log)
        if state is None or not state.is_completed():
            raise TrainingRunError(
                f"training run {flow_run.name!r} of deployment {deployment} ended "
                f"{state.name if state else 'without a state'}: "
                f"{state.message if state else ''}; open that run in the Prefect UI for its "
                "logs, fix the cause and rerun (finished stages are reused)"
            )
        manifest = load_manifest(store, spec.stage, spec.key)
        if manifest is None:
            raise TrainingRunError(
                f"training run {flow_run.name!r} completed but committed no model at "
                f"{store.uri(spec.prefix)}; check that its worker uses the same store"
            )
    ref = committed_ref(manifest, reused=reused)
    log.info("train: %s", ref.counts)
    return ref


def run_page(flow_run_id: UUID) -> str:
    """Where a flow run's page is in the Prefect UI, or its id when no UI URL is known."""
    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else f"flow run id {flow_run_id}"


def _progress(client: SyncPrefectClient, flow_run_id: UUID) -> float | None:
    """The training run's progress artifact (percent), None before it has one."""
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    data = found[0].data if found else None
    return float(data) if isinstance(data, int | float) else None


def follow_training_run(flow_run_id: UUID, name: str, log) -> State | None:
    """Wait for a training run, naming it and relaying its progress in this run's log; if this
    run stops first (cancelled, interrupted, crashed), cancel the training run too."""
    log.info("training run %r started; its logs and progress: %s", name, run_page(flow_run_id))
    relayed = 0
    with get_client(sync_client=True) as client:
        try:
            while True:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    return state
                percent = _progress(client, flow_run_id)
                if percent is not None and percent >= relayed + RELAY_PERCENT:
                    relayed = int(percent // RELAY_PERCENT * RELAY_PERCENT)
                    log.info("training run %r: %d%% of its steps done", name, relayed)
                time.sleep(DEPLOYMENT_POLL_SECONDS)
        except BaseException:
            # Prefect does not cancel a deployment's run with the run that started it.
            with contextlib.suppress(Exception):
                cancelling = Cancelling(message=CANCELLED_BY_PIPELINE)
                client.set_flow_run_state(flow_run_id, cancelling, force=True)
                log.warning("cancelled training run %r, as this run stopped", name)
            raise
