"""Typed model and training configuration; derived values are methods, validation is here."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from storage.errors import UserError
from tasks.params import StageParams

DEFAULT_KEY_TOKENS = ["plt", "pd", "sk", "fit", "predict"]
# Settings that change how a run is executed or kept safe, not what it computes (beyond float
# rounding): not part of the stage key, so changing one reuses a finished model.
EXECUTION_FIELDS = {
    "checkpoint_interval",
    "keep_checkpoints",
    "micro_batch_size",
    "compile",
    "allow_cpu",
}
# Models larger than this take days on a CPU (the course's is 124M): they need a GPU, or
# train.allow_cpu to say that a CPU is meant.
CPU_PARAMETER_LIMIT = 50_000_000


class NeedsGpuError(UserError, ValueError):
    """A run asked for what needs a GPU (a large model without allow_cpu, or fp16) on a
    machine without one."""


class ModelConfig(StageParams):
    """GPT-2 shape. Defaults are the course's 124M model."""

    n_layer: int = Field(default=12, ge=1)
    """Transformer blocks."""
    n_embd: int = Field(default=768, ge=8)
    """Width of the residual stream."""
    n_head: int = Field(default=12, ge=1)
    """Attention heads; must divide n_embd."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention and residuals (GPT-2's 0.1)."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class TrainConfig(StageParams):
    """The optimisation: batch arithmetic, schedule, precision, loss. Defaults are the course's."""

    batch_size: int = Field(default=32, ge=1)
    """Sequences per process per batch; an optimizer step takes
    gradient_accumulation_steps batches from each process."""
    gradient_accumulation_steps: int = Field(default=8, ge=1)
    """Batches per optimizer step. The tokens per step are batch_size × context length ×
    this × processes: with the defaults, 32 × 128 × 8 = 32,768 on one GPU."""
    micro_batch_size: int | Literal["auto"] = "auto"
    """Sequences per forward/backward pass. An optimizer step's rows (batch_size ×
    accumulation on each process) are run in micro-batches of this size; the gradient is the
    same whatever the size. With auto: on a GPU, the largest that fits in its memory (tried
    at start); on CPU, batch_size (larger ones ran no faster; docs/training.md)."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the model for training (the chunked loss stays eager, see the loss
    module). With auto: on for CUDA, off on CPU, where it gained too little (docs/training.md)."""
    learning_rate: float = Field(default=5e-4, gt=0.0, le=1.0)
    """Peak learning rate, reached after warmup."""
    weight_decay: float = Field(default=0.1, ge=0.0)
    """AdamW decay on matrices only; biases and LayerNorm weights get none."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (the course keeps PyTorch's defaults)."""
    warmup_steps: int = Field(default=1_000, ge=0)
    """Optimizer steps of linear warmup."""
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    """Decay after warmup, counted in optimizer steps."""
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Gradient clipping threshold."""
    epochs: float = Field(default=1.0, gt=0.0)
    """Passes over the training rows."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (caps epochs)."""
    eval_interval: int = Field(default=500, ge=1)
    """Optimizer steps between validation passes."""
    eval_batches: int = Field(default=50, ge=1)
    """Validation batches per periodic validation (the final evaluation uses all)."""
    api_eval_cases: int = Field(default=64, ge=0, le=10_000)
    """Held-out API completion cases measured at each periodic validation, for the curve of
    API accuracy against training tokens; 0 skips them."""
    log_interval: int = Field(default=10, ge=1)
    """Optimizer steps between progress lines."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """With auto: bf16 on GPUs that support it, else fp16 on GPU; on CPU, bf16 where the
    CPU has bf16 instructions (AVX512-BF16 or AMX), else none. fp16 needs a GPU."""
    loss: Literal["normalized", "course"] = "normalized"
    """With normalized: the weighted loss divided by the total key-token weight; with course:
    the mean weighted loss."""
    keytoken_alpha: float = Field(default=1.0, gt=0.0)
    """Weight scale: a sample's weight is alpha × (1 + its number of key tokens)."""
    key_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_KEY_TOKENS))
    """Words whose tokens up-weight a sample (their space-prefixed forms count too)."""
    seed: int = 42
    """Seeds initialisation, dropout and data order."""
    processes: int | None = Field(default=None, ge=1)
    """Training processes, one per GPU; empty: one per visible GPU (one on a CPU machine).

    Each process takes batch_size sequences per micro-batch, so the tokens per optimizer
    step grow with the process count. Several processes on CPU work too (for testing)."""
    checkpoint_interval: int = Field(default=500, ge=1)
    """Optimizer steps between checkpoints in the store (one is also saved at the end)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Newest checkpoints kept; older ones are deleted."""
    allow_cpu: bool = False
    """Train a model of over 50M parameters on a machine without a GPU (that takes days).
    Off: such a run stops at once with a clear message."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_no(cls, value: object) -> object:
        # YAML reads a bare `no` (`--set train.mixed_precision=no`) as false.
        return "no" if value is False else value

    @field_validator("key_tokens")
    @classmethod
    def _no_empty_key_token(cls, words: list[str]) -> list[str]:
        if any(not word.strip() for word in words):
            raise ValueError("an empty key token would up-weight every space; remove it")
        return words

    def resolved_processes(self) -> int:
        """How many training processes this machine runs for this config."""
        if self.processes is not None:
            return self.processes
        return max(torch.cuda.device_count(), 1)

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_micro_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or 'auto'")
        return value

    def rows_per_step(self, num_processes: int = 1) -> int:
        """Sequences consumed by one optimizer step across all processes."""
        return self.batch_size * self.gradient_accumulation_steps * num_processes

    def total_steps(self, train_rows: int, num_processes: int = 1) -> int:
        """Optimizer steps of the run, from the row count in the shard manifest."""
        micro_batches_per_epoch = train_rows // (self.batch_size * num_processes)
        steps = math.floor(self.epochs * micro_batches_per_epoch / self.gradient_accumulation_steps)
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        if steps < 1:
            raise ValueError(
                f"{train_rows} training rows make no full optimizer step of "
                f"{self.rows_per_step(num_processes)} rows; lower train.batch_size or "
                "train.gradient_accumulation_steps, raise train.epochs, or use more data"
            )
        return steps


def parameter_count(model: ModelConfig, vocab_size: int, context_length: int) -> int:
    """GPT-2's parameters for this shape (input and output embeddings tied)."""
    width = model.n_embd
    per_block = 12 * width * width + 13 * width  # attention, MLP, two LayerNorms
    return (vocab_size + context_length) * width + model.n_layer * per_block + 2 * width


def check_hardware(
    model: ModelConfig, train: TrainConfig, vocab_size: int, context_length: int, has_gpu: bool
) -> None:
    """Refuse to train a large model without a GPU unless ``train.allow_cpu`` says so."""
    count = parameter_count(model, vocab_size, context_length)
    if has_gpu or train.allow_cpu or count <= CPU_PARAMETER_LIMIT:
        return
    raise NeedsGpuError(
        f"this model has {count / 1e6:.0f}M parameters and this machine has no GPU, so "
        "training would take days: choose a smaller preset (smoke or ds), train on a GPU "
        "deployment (training_deployment), or set train.allow_cpu: true to train here anyway"
    )
