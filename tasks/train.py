"""Stage 5: train GPT-2 from scratch on the token shards; save weights and loss history."""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path

import accelerate
import torch
import transformers
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

import tasks.training.checkpoint
import tasks.training.config
import tasks.training.data
import tasks.training.evaluation
import tasks.training.loop
import tasks.training.loss
import tasks.training.model
from storage.shards import load_token_shards
from storage.stages import (
    CHECKPOINTS_DIR,
    PartInfo,
    StageRef,
    StageSpec,
    StageWriter,
    code_version,
    committed_ref,
    load_manifest,
    part_folder,
    run_stage,
)
from storage.store import Store
from tasks.common import stage_logger, stage_task
from tasks.progress import ProgressArtifact, ProgressCallback
from tasks.tokenizer import load_stage_tokenizer
from tasks.train_launch import launch_training
from tasks.training.checkpoint import CheckpointStore
from tasks.training.config import CHECKPOINT_FIELDS, ModelConfig, TrainConfig
from tasks.training.data import TokenRows
from tasks.training.loop import make_accelerator, resolve_mixed_precision, train_model_loop
from tasks.training.loss import resolve_key_tokens
from tasks.training.model import build_model, gpt2_config

MODEL_DIR = "model"
HISTORY_PART = "history.json"
# Seconds between polls of a training run on another worker.
DEPLOYMENT_POLL_SECONDS = 5
TRAINING_CODE = [
    tasks.training.checkpoint,
    tasks.training.config,
    tasks.training.data,
    tasks.training.evaluation,
    tasks.training.loop,
    tasks.training.loss,
    tasks.training.model,
]


def train_from_shards(
    tokens: StageRef,
    tokenizer_ref: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    writer: StageWriter,
    log,
    on_progress: ProgressCallback | None = None,
) -> dict:
    """Build a fresh GPT-2, train it on the token shards, and write it with its history.

    In a multi-process run every process calls this; only the main process writes the model
    and returns the counts (the others return an empty dict).
    """
    tokenizer = load_stage_tokenizer(tokenizer_ref)
    keytoken_ids, missing = resolve_key_tokens(tokenizer, train_config.key_tokens)
    if missing:
        log.warning(
            "key tokens that are not single tokens in this tokenizer are not up-weighted: %s",
            missing,
        )
    log.info("key token ids: %s", keytoken_ids)
    train_rows = TokenRows(load_token_shards(tokens, "train"))
    valid_rows = TokenRows(load_token_shards(tokens, "valid"))
    config = gpt2_config(
        model_config, len(tokenizer), train_rows.context_length, tokenizer.eos_token_id
    )
    accelerator = make_accelerator(train_config)
    model = build_model(config, train_config.seed)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("GPT-2 with %.1fM parameters, %d training rows", parameters / 1e6, len(train_rows))
    checkpoints = CheckpointStore(
        writer.store, f"{writer.prefix}/{CHECKPOINTS_DIR}", train_config.keep_checkpoints, log
    )
    result = train_model_loop(
        model,
        train_rows,
        valid_rows,
        keytoken_ids,
        train_config,
        accelerator,
        log,
        checkpoints,
        on_progress,
    )
    if not accelerator.is_main_process:
        return {}
    with tempfile.TemporaryDirectory(prefix="model-") as folder:
        accelerator.unwrap_model(model).save_pretrained(folder)
        writer.put_dir(folder, MODEL_DIR)
    writer.write_json(HISTORY_PART, {"train": result.history, "valid": result.evals})
    return {
        "parameters": parameters,
        "processes": accelerator.num_processes,
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_train_loss": result.history[-1]["loss"],
        "final_valid_loss": result.evals[-1]["valid_loss"],
        "mixed_precision": result.mixed_precision,
        "checkpoints": result.checkpoints,
        "checkpoint_seconds": round(result.checkpoint_seconds, 2),
        "resumed_from_step": result.resumed_from,
        "keytoken_ids": keytoken_ids,
    }


def training_request(
    tokens: StageRef,
    tokenizer: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    store_url: str,
) -> dict:
    """A training run's inputs as plain JSON: the training flow's parameters, and what a
    launched training process reads."""
    return {
        "tokens": tokens.model_dump(mode="json"),
        "tokenizer": tokenizer.model_dump(mode="json"),
        "model": model_config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json"),
        "store_url": store_url,
    }


def build_training(
    tokens: StageRef,
    tokenizer_ref: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    writer: StageWriter,
    log,
    on_progress: ProgressCallback | None = None,
) -> dict:
    """Train in this process, or in one launched process per GPU when there are several."""
    processes = train_config.resolved_processes()
    if processes == 1:
        return train_from_shards(
            tokens, tokenizer_ref, model_config, train_config, writer, log, on_progress
        )
    request = {
        **training_request(tokens, tokenizer_ref, model_config, train_config, writer.store.url),
        "stage": writer.stage,
        "key": writer.key,
    }
    outcome = launch_training(
        request, processes, resolve_mixed_precision(train_config.mixed_precision), log, on_progress
    )
    writer.parts.update({n: PartInfo.model_validate(i) for n, i in outcome["parts"].items()})
    return outcome["counts"]


def train_spec(
    tokens: StageRef, tokenizer: StageRef, model_config: ModelConfig, train_config: TrainConfig, **_
) -> StageSpec:
    """Where the model trained on these tokens with these settings lives."""
    params = {
        "model": model_config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json", exclude=CHECKPOINT_FIELDS),
    }
    version = code_version(
        [sys.modules[__name__], *TRAINING_CODE],
        torch.__version__,
        transformers.__version__,
        accelerate.__version__,
    )
    return StageSpec.of("training", params, {"tokens": tokens, "tokenizer": tokenizer}, version)


@stage_task("train-model", train_spec)
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
    build = partial(
        build_training,
        tokens,
        tokenizer,
        model_config,
        train_config,
        log=log,
        on_progress=ProgressArtifact.for_current_run(log),
    )
    spec = train_spec(tokens, tokenizer, model_config, train_config)
    ref = run_stage(Store(store_url), spec, build, log)
    log.info("training: %s", ref.counts)
    return ref


class TrainingRunError(RuntimeError):
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


@stage_task("train-model-on-deployment", train_spec)
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
    store = Store(store_url)
    spec = train_spec(tokens, tokenizer, model_config, train_config)
    manifest = load_manifest(store, spec.stage, spec.key)
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
        flow_run = run_deployment(
            found.id,
            parameters=training_request(tokens, tokenizer, model_config, train_config, store_url),
            poll_interval=DEPLOYMENT_POLL_SECONDS,
        )
        state = flow_run.state
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
    ref = committed_ref(store, spec, manifest)
    log.info("training: %s", ref.counts)
    return ref


def model_folder(ref: StageRef) -> Path:
    """A local folder holding the weights and config of a committed training stage."""
    return part_folder(ref, MODEL_DIR)
