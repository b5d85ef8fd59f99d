"""The training loop: a short step loop; logging, validation and checkpoints are its hooks.

Accumulation, clipping, schedule, mixed precision and the key-token loss are in the step
(``tasks.train.trainer``); what happens around steps is in ``tasks.train.hooks``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tasks.train.checkpoint import CheckpointStore
from tasks.train.config import NeedsGpuError, TrainConfig
from tasks.train.data import BatchStream, StreamPosition, TokenRows
from tasks.train.hooks import (
    Checkpointing,
    PeriodicValidation,
    ProgressLog,
    TrainHook,
    TrainingLoop,
)
from tasks.train.prefetch import StepPrefetcher
from tasks.train.result import TrainResult
from tasks.train.state import CheckpointSaver, newest_sound_checkpoint, set_rng_state
from tasks.train.trainer import Trainer


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles). Elsewhere
    bf16 is emulated, so auto keeps fp32 there."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` means bf16 on GPUs that support it, fp16 on other GPUs, and on CPU bf16 where
    the CPU has bf16 instructions, else none."""
    on_gpu = torch.cuda.is_available()
    if requested != "auto":
        if requested == "fp16" and not on_gpu:
            raise NeedsGpuError(
                "train.mixed_precision='fp16' needs a CUDA GPU and none is visible; "
                "use 'auto', 'bf16' or 'no' on CPU"
            )
        return requested
    if not on_gpu:
        return "bf16" if cpu_has_native_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for this config (the step does its own accumulation)."""
    if torch.cuda.is_available():
        # TF32 for the fp32 matmuls left under bf16 autocast (and for fp32 runs).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = resolve_mixed_precision(config.mixed_precision)
    # Accelerate keeps one precision per process and refuses another; a process that trains
    # again with another (a test, a served flow) starts that state afresh. The distributed
    # set-up (PartialState) is kept.
    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision)


def _resume(
    checkpoints: CheckpointStore,
    trainer: Trainer,
    result: TrainResult,
    log: logging.Logger | logging.LoggerAdapter,
) -> StreamPosition | None:
    """Load the newest sound checkpoint into the run; the data position to go on from, or
    None to start afresh."""
    found = newest_sound_checkpoint(checkpoints, trainer.model, trainer.accelerator, log)
    if found is None:
        return None
    step, state, rank_state = found
    trainer.load_state(state)
    set_rng_state(rank_state["rng"])
    for name in result.progress():
        if name in state["result"]:
            setattr(result, name, state["result"][name])
    result.resumed_from = step
    log.info("resuming from the checkpoint at step %d", step)
    return StreamPosition(**rank_state["position"])


def train_model_loop(
    model: torch.nn.Module,
    train_rows: TokenRows,
    valid_rows: TokenRows,
    keytoken_ids: list[int],
    config: TrainConfig,
    accelerator: Accelerator,
    log: logging.Logger | logging.LoggerAdapter,
    checkpoints: CheckpointStore | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    probe: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    hooks: Iterable[TrainHook] = (),
) -> TrainResult:
    """Train the model in place; return the loss history and throughput.

    One optimizer step takes ``batch_size * gradient_accumulation_steps`` rows per process,
    run in micro-batches (``micro_batch_size``); the scheduler steps once per optimizer step.
    With ``checkpoints``, the run resumes from the newest committed checkpoint and saves one
    every ``checkpoint_interval`` steps and at the end. ``on_progress`` gets each logged
    record on the main process; ``probe`` measures the model at each periodic validation
    (the API-accuracy curve). ``hooks`` are called after the loop's own (see
    ``tasks.train.hooks``).
    """
    total_steps = config.total_steps(len(train_rows), accelerator.num_processes)
    trainer = Trainer(model, config, accelerator, keytoken_ids, total_steps)
    result = TrainResult(
        steps=0, tokens=0, seconds=0.0, mixed_precision=accelerator.mixed_precision
    )
    position = _resume(checkpoints, trainer, result, log) if checkpoints is not None else None
    trainer.size_micro_batches(train_rows.context_length, log)
    tokens_per_step = config.rows_per_step(accelerator.num_processes) * train_rows.context_length
    log.info(
        "training %d optimizer steps: %d seqs * %d tokens * %d accumulation * %d process(es) = "
        "%s tokens per step, in micro-batches of %d seqs; mixed precision %s on %s; %s",
        total_steps,
        config.batch_size,
        train_rows.context_length,
        config.gradient_accumulation_steps,
        accelerator.num_processes,
        f"{tokens_per_step:,}",
        trainer.micro_batch_size,
        accelerator.mixed_precision,
        accelerator.device,
        "compiled" if trainer.compiled else "not compiled",
    )
    session_start = time.perf_counter()
    loop = TrainingLoop(
        config=config,
        accelerator=accelerator,
        trainer=trainer,
        result=result,
        total_steps=total_steps,
        tokens_per_step=tokens_per_step,
        log=log,
        # A resumed run's clock goes on from the checkpoint's, so totals cover the whole run.
        start=session_start - result.seconds,
        session_start=session_start,
        first_step=result.steps + 1,
    )
    checkpointing = (
        Checkpointing(CheckpointSaver(checkpoints, accelerator)) if checkpoints else None
    )
    loop.hooks = [
        ProgressLog(on_progress),
        PeriodicValidation(valid_rows, probe),
        *([checkpointing] if checkpointing else []),
        *hooks,
    ]
    stream = BatchStream(
        train_rows,
        config.batch_size,
        config.seed,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    prefetcher = StepPrefetcher(
        stream.iterate(position),
        config.gradient_accumulation_steps,
        total_steps - result.steps,
        accelerator.device,
    )
    trainer.loss_model.train()
    try:
        for step in range(loop.first_step, total_steps + 1):
            loop.position, rows = prefetcher.next()
            output = trainer.train_step(step, rows)
            result.steps = step
            result.tokens += tokens_per_step
            for hook in loop.hooks:
                hook.on_step(loop, output)
    finally:
        prefetcher.close()
        if checkpointing is not None:
            # Also on an interrupt: the checkpoint under way is committed, not lost.
            checkpointing.finish(loop)
    result.seconds = time.perf_counter() - loop.start
    if not math.isfinite(result.history[-1]["loss"]):
        raise FloatingPointError(
            "training diverged (loss is not finite); lower train.learning_rate or use bf16"
        )
    return result
