"""Stage 6: perplexity on the validation shards, and completions for fixed prompts."""

from __future__ import annotations

import contextlib
import sys
from functools import partial

import torch
import transformers
from pydantic import Field
from transformers import GPT2LMHeadModel

import tasks.generation
import tasks.training.data
import tasks.training.evaluation
from storage.shards import load_token_shards
from storage.stages import StageRef, StageWriter, read_manifest
from storage.store import Store
from tasks.common import Stage, stage_logger
from tasks.generation import complete, load_generator
from tasks.params import StageParams
from tasks.tokenizer import load_stage_tokenizer
from tasks.training.data import TokenRows, sequential_batches
from tasks.training.evaluation import evaluate_loss
from tasks.training.model import build_model
from tasks.training_run import model_folder

SCATTER_PROMPT = "# create scatter plot with x, y\n"
DEFAULT_PROMPTS = [
    SCATTER_PROMPT,
    "# load the csv file data.csv into a dataframe\n",
    "# fit a random forest classifier on X_train, y_train\n",
]
METRICS_PART = "metrics.json"
SAMPLES_PART = "samples.json"


class EvalConfig(StageParams):
    """How the trained model is measured."""

    batch_size: int = Field(default=32, ge=1)
    """Validation rows per forward pass."""
    max_batches: int | None = Field(default=None, ge=1)
    """Evaluate on at most this many batches; None uses the whole validation split."""
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1)
    """Prompts completed by the model and kept with the metrics."""
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    """Tokens generated per prompt (greedy decoding, so samples are reproducible)."""


def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy completions of each prompt, so samples are reproducible."""
    generator = load_generator(model, tokenizer)
    return [
        {"prompt": prompt, "completion": complete(generator, prompt, max_new_tokens)}
        for prompt in prompts
    ]


def evaluate_model(
    store: Store,
    training: StageRef,
    tokens: StageRef,
    tokenizer_ref: StageRef,
    config: EvalConfig,
    writer: StageWriter,
    log,
) -> dict:
    """Measure validation perplexity of the trained and an untrained model; sample completions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2LMHeadModel.from_pretrained(str(model_folder(store, training))).to(device)
    tokenizer = load_stage_tokenizer(store, tokenizer_ref)
    valid_rows = TokenRows(load_token_shards(store, tokens, "valid"))

    def measure(candidate) -> tasks.training.evaluation.EvalResult:
        batches = sequential_batches(valid_rows, config.batch_size, config.max_batches)
        return evaluate_loss(candidate, batches, device, contextlib.nullcontext)

    trained = measure(model)
    untrained = measure(build_model(model.config, seed=0).to(device))
    log.info(
        "validation perplexity %.2f (course's exp(mean batch loss): %.2f) over %d tokens; "
        "untrained model: %.2f",
        trained.perplexity,
        trained.course_perplexity,
        trained.tokens,
        untrained.perplexity,
    )
    samples = generate_completions(model, tokenizer, config.prompts, config.max_new_tokens)
    for sample in samples:
        log.info("sample: %r -> %r", sample["prompt"], sample["completion"])
    training_counts = read_manifest(store, training).counts
    metrics = {
        "valid_loss": trained.loss,
        "perplexity": trained.perplexity,
        "course_perplexity": trained.course_perplexity,
        "untrained_perplexity": untrained.perplexity,
        "valid_tokens": trained.tokens,
        "train_tokens_per_second": training_counts["tokens_per_second"],
        "train_seconds": training_counts["train_seconds"],
        "final_train_loss": training_counts["final_train_loss"],
    }
    writer.write_json(METRICS_PART, metrics)
    writer.write_json(SAMPLES_PART, samples)
    return {**metrics, "samples": samples}


EVALUATE = Stage(
    "evaluate",
    inputs=("training", "tokens", "tokenizer"),
    code=(
        sys.modules[__name__],
        tasks.generation,
        tasks.training.evaluation,
        tasks.training.data,
    ),
    libraries=(torch.__version__, transformers.__version__),
)


@EVALUATE.task
def evaluate_perplexity(
    training: StageRef, tokens: StageRef, tokenizer: StageRef, config: EvalConfig, store_url: str
) -> StageRef:
    """Validation perplexity (plain loss) and sample completions of the trained model."""
    log = stage_logger()
    build = partial(evaluate_model, Store(store_url), training, tokens, tokenizer, config, log=log)
    inputs = {"training": training, "tokens": tokens, "tokenizer": tokenizer}
    return EVALUATE.run(store_url, EVALUATE.spec(config, inputs), build, log)
