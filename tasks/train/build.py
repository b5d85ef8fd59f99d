"""Training one GPT-2 from the store's token shards, in this process (or one launched rank).

No Prefect here: the stage's task (``tasks.train.task``) and each launched process
(``tasks.train.launch``) call ``train_from_shards``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from storage.shards import load_token_shards
from storage.stages import CHECKPOINTS_DIR, StageRef, StageSpec, StageWriter, input_ref, part_folder
from storage.store import Store
from tasks.completions import API_MAX_NEW_TOKENS, api_probe, completion_cases
from tasks.tokenizer.build import load_stage_tokenizer, token_id_bound
from tasks.train import TRAIN
from tasks.train.checkpoint import CheckpointStore
from tasks.train.config import EXECUTION_FIELDS, ModelConfig, TrainConfig
from tasks.train.data import TokenRows
from tasks.train.hooks import ProgressCallback, TrainHook
from tasks.train.loop import make_accelerator, train_model_loop
from tasks.train.loss import resolve_key_tokens
from tasks.train.model import build_model, gpt2_config

MODEL_DIR = "model"
HISTORY_PART = "history.json"


def check_token_range(train_rows: TokenRows, valid_rows: TokenRows, vocab_size: int) -> None:
    """Every token id in the shards must be a row of the model's embedding."""
    for rows in (train_rows, valid_rows):
        for array in rows.arrays:
            if array.size and int(np.max(array)) >= vocab_size:
                raise ValueError(
                    f"the token shards hold id {int(np.max(array)):,}, but the tokenizer "
                    f"declares only {vocab_size:,} ids; retokenize with this tokenizer"
                )


def periodic_api_probe(store: Store, tokens: StageRef, tokenizer, cases: int, log):
    """The API-accuracy probe of the periodic validations, on held-out cases of the documents
    the shards were made from; None when ``cases`` is 0 or those documents hold none."""
    if cases == 0:
        return None
    documents = input_ref(store, tokens, "filter")
    found, _ = completion_cases(store, documents, cases)
    if not found:
        log.warning("no held-out API cases in %s: no API-accuracy curve", documents.prefix)
        return None
    log.info("periodic validations measure API accuracy on %d held-out cases", len(found))
    return api_probe(tokenizer, found, API_MAX_NEW_TOKENS)


def train_from_shards(
    store: Store,
    tokens: StageRef,
    tokenizer_ref: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    writer: StageWriter,
    log,
    on_progress: ProgressCallback | None = None,
    hooks: Iterable[TrainHook] = (),
) -> dict:
    """Build a fresh GPT-2, train it on the token shards, and write it with its history.

    The inputs are read from ``store``; the model, history and checkpoints go to ``writer``.
    ``hooks`` join the training loop's own (``tasks.train.hooks``).
    In a multi-process run every process calls this; only the main process writes the model
    and returns the counts (the others return an empty dict).
    """
    tokenizer = load_stage_tokenizer(store, tokenizer_ref)
    keytoken_ids, dropped = resolve_key_tokens(tokenizer, train_config.key_tokens)
    if dropped:
        log.warning("key tokens not up-weighted: %s", "; ".join(dropped))
    log.info("key token ids: %s", keytoken_ids)
    train_rows = TokenRows(load_token_shards(store, tokens, "train"))
    valid_rows = TokenRows(load_token_shards(store, tokens, "valid"))
    vocab_size = token_id_bound(tokenizer)
    check_token_range(train_rows, valid_rows, vocab_size)
    config = gpt2_config(
        model_config, vocab_size, train_rows.context_length, tokenizer.eos_token_id
    )
    accelerator = make_accelerator(train_config)
    model = build_model(config, train_config.seed)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("GPT-2 with %.1fM parameters, %d training rows", parameters / 1e6, len(train_rows))
    # Checkpoints live beside the output being built, which may be in another store than
    # the inputs (a test's reference run, say).
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
        periodic_api_probe(store, tokens, tokenizer, train_config.api_eval_cases, log),
        hooks,
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


def train_spec(
    tokens: StageRef, tokenizer: StageRef, model_config: ModelConfig, train_config: TrainConfig
) -> StageSpec:
    """Where the model trained on these tokens with these settings lives."""
    params = {
        "model": model_config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json", exclude=EXECUTION_FIELDS),
    }
    return TRAIN.spec(params, {"tokenize": tokens, "tokenizer": tokenizer})


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


def model_folder(store: Store, ref: StageRef) -> Path:
    """A local folder holding the weights and config of a committed training stage."""
    return part_folder(store, ref, MODEL_DIR)
