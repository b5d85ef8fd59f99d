"""Stage evaluate: perplexity on the validation shards, and completions for fixed prompts."""

from __future__ import annotations

import contextlib

import torch
from pydantic import Field
from transformers import GPT2LMHeadModel

from storage.shards import load_token_shards
from storage.stages import StageRef, StageSpec, StageWriter, read_manifest
from storage.store import Store
from tasks.completions import (
    API_MAX_NEW_TOKENS,
    COURSE_CASES,
    Case,
    completion_cases,
    course_case_passes,
    greedy_completions,
    measure_api_accuracy,
    percent,
)
from tasks.evaluate import EVALUATE
from tasks.evaluate.generation import complete, load_generator
from tasks.evaluate.humaneval import describe as describe_humaneval
from tasks.evaluate.humaneval import humaneval_pass_at_1
from tasks.evaluate.sandbox import Limits
from tasks.params import StageParams
from tasks.tokenizer.build import load_stage_tokenizer
from tasks.train.build import model_folder
from tasks.train.data import TokenRows, sequential_batches
from tasks.train.evaluation import EvalResult, evaluate_loss
from tasks.train.model import build_model

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
    api_cases: int = Field(default=200, ge=0, le=100_000)
    """Completion cases built from held-out code for API accuracy; 0 skips it."""
    api_max_new_tokens: int = Field(default=API_MAX_NEW_TOKENS, ge=4, le=256)
    """Tokens generated per completion case: enough for one line of code."""
    humaneval: bool = False
    """Also measure HumanEval pass@1, running the generated code in a sandbox (no network,
    memory and time limits, a scratch folder)."""
    humaneval_problems: int | None = Field(default=None, ge=1, le=164)
    """Measure only the first this many HumanEval problems; None takes all 164."""
    humaneval_max_new_tokens: int = Field(default=64, ge=8, le=1024)
    """Tokens generated per HumanEval problem (greedy)."""
    humaneval_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)
    """Wall-clock limit for running one problem's tests."""


def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Greedy completions of each prompt, so samples are reproducible."""
    generator = load_generator(model, tokenizer)
    return [
        {"prompt": prompt, "completion": complete(generator, prompt, max_new_tokens)}
        for prompt in prompts
    ]


def measure_completions(model, tokenizer, cases: list[Case], config: EvalConfig) -> dict:
    """API accuracy on the cases and pass/fail on the course's four prompts."""
    course = greedy_completions(
        model, tokenizer, [c["prompt"] for c in COURSE_CASES], config.api_max_new_tokens
    )
    return {
        "api": measure_api_accuracy(model, tokenizer, cases, config.api_max_new_tokens),
        "course_prompts": [
            {"name": case["name"], "passed": course_case_passes(case, text), "completion": text}
            for case, text in zip(COURSE_CASES, course, strict=True)
        ],
    }


def measure_humaneval(model, tokenizer, config: EvalConfig, log) -> dict:
    """HumanEval pass@1 of greedy completions, the programs run in the sandbox."""
    result = humaneval_pass_at_1(
        model,
        tokenizer,
        config.humaneval_problems,
        config.humaneval_max_new_tokens,
        Limits(timeout_s=config.humaneval_timeout_s),
    )
    log.info("HumanEval %s", describe_humaneval(result))
    return result


def evaluate_model(
    store: Store,
    training: StageRef,
    tokens: StageRef,
    tokenizer_ref: StageRef,
    documents: StageRef,
    config: EvalConfig,
    writer: StageWriter,
    log,
) -> dict:
    """Measure the trained model against an untrained one: validation perplexity, API accuracy
    on held-out code, the course's four prompts; and sample completions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2LMHeadModel.from_pretrained(str(model_folder(store, training))).to(device)
    untrained_model = build_model(model.config, seed=0).to(device)
    tokenizer = load_stage_tokenizer(store, tokenizer_ref)
    valid_rows = TokenRows(load_token_shards(store, tokens, "valid"))
    rows = len(valid_rows)
    if config.max_batches is not None:
        rows = min(rows, config.max_batches * config.batch_size)

    def measure(candidate) -> EvalResult:
        batches = sequential_batches(valid_rows, config.batch_size, config.max_batches)
        return evaluate_loss(candidate, batches, device, contextlib.nullcontext)

    trained = measure(model)
    untrained = measure(untrained_model)
    log.info(
        "validation perplexity %.2f (course's exp(mean batch loss): %.2f) on %s of %s "
        "validation rows; untrained model: %.2f",
        trained.perplexity,
        trained.course_perplexity,
        f"{rows:,}",
        f"{len(valid_rows):,}",
        untrained.perplexity,
    )
    cases, case_counts = completion_cases(store, documents, config.api_cases)
    completion = measure_completions(model, tokenizer, cases, config)
    untrained_completion = measure_completions(untrained_model, tokenizer, cases, config)
    api = completion["api"]
    log.info(
        "API accuracy@1 %s on %d held-out cases (%s); untrained model: %s; course prompts "
        "passed: %d of %d",
        percent(api["accuracy"]),
        api["cases"],
        ", ".join(
            f"{k} {percent(v['accuracy'])} of {v['cases']}" for k, v in api["by_library"].items()
        ),
        percent(untrained_completion["api"]["accuracy"]),
        sum(c["passed"] for c in completion["course_prompts"]),
        len(COURSE_CASES),
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
        "valid_rows_evaluated": rows,
        "valid_rows": len(valid_rows),
        "api_accuracy": api["accuracy"],
        "api_cases": api["cases"],
        "api_by_library": api["by_library"],
        "untrained_api_accuracy": untrained_completion["api"]["accuracy"],
        "eval_documents": case_counts["documents"],
        "eval_overlap_documents": case_counts["overlap_documents"],
        "course_prompts": completion["course_prompts"],
        "course_prompts_passed": sum(c["passed"] for c in completion["course_prompts"]),
        "train_tokens_per_second": training_counts["tokens_per_second"],
        "train_seconds": training_counts["train_seconds"],
        "final_train_loss": training_counts["final_train_loss"],
    }
    if config.humaneval:
        metrics["humaneval"] = measure_humaneval(model, tokenizer, config, log)
    writer.write_json(METRICS_PART, metrics)
    writer.write_json(SAMPLES_PART, samples)
    return {**metrics, "samples": samples}


def evaluate_spec(
    training: StageRef,
    tokens: StageRef,
    tokenizer: StageRef,
    documents: StageRef,
    config: EvalConfig,
) -> StageSpec:
    """Where the evaluation of this model, on these tokens and documents, lives."""
    inputs = {"train": training, "tokenize": tokens, "tokenizer": tokenizer, "filter": documents}
    return EVALUATE.spec(config, inputs)
