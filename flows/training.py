"""The training stage as a flow of its own, for a deployment on the GPU work pool."""

from __future__ import annotations

from prefect import flow

from flows.failures import install_one_line_failures
from storage.stages import StageRef
from tasks.running import open_run_store
from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.task import train_model

install_one_line_failures()


@flow(name="codeparrot-ds-train")
def codeparrot_train(
    tokens: StageRef,
    tokenizer: StageRef,
    # Default instances let the Prefect UI render every field's default in the run form.
    model: ModelConfig = ModelConfig(),  # noqa: B008
    train: TrainConfig = TrainConfig(),  # noqa: B008
    store_url: str | None = None,
) -> StageRef:
    """Train GPT-2 on token shards in the store and commit the model there.

    Args:
        tokens: The token shards to train on (a committed output of the tokenize stage).
        tokenizer: The tokenizer those shards were made with.
        model: The GPT-2 shape.
        train: The optimisation settings; ``processes`` empty uses every visible GPU.
        store_url: The store holding the inputs; empty uses this worker's $CODEPARROT_STORE.
    """
    return train_model(tokens, tokenizer, model, train, open_run_store(store_url))
