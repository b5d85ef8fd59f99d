"""The Accelerate training loop: accumulation, clipping, schedule, mixed precision, validation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from tasks.training.checkpoint import Checkpoint, CheckpointStore, from_bytes, to_bytes
from tasks.training.config import TrainConfig
from tasks.training.data import BatchStream, StreamPosition, TokenRows, sequential_batches
from tasks.training.evaluation import evaluate_loss
from tasks.training.loss import keytoken_weights, per_sample_loss
from tasks.training.model import parameter_groups


@dataclass
class TrainResult:
    """What a finished run reports: its history and totals."""

    steps: int
    tokens: int
    seconds: float
    mixed_precision: str
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    checkpoints: int = 0
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run so far, so a resumed run reports the whole run."""
        keep = ("steps", "tokens", "seconds", "eval_seconds", "checkpoint_seconds", "checkpoints")
        return {
            **{name: getattr(self, name) for name in keep},
            "history": self.history,
            "evals": self.evals,
        }

    @property
    def tokens_per_second(self) -> float:
        """Training throughput over the whole run, validation and checkpoints left out."""
        train_seconds = self.seconds - self.eval_seconds - self.checkpoint_seconds
        return self.tokens / train_seconds if train_seconds > 0 else 0.0


STATE_FILE = "state.pt"


def _rank_file(rank: int) -> str:
    return f"rank-{rank}.pt"


def _rng_state() -> dict[str, Any]:
    # Only torch's generators drive randomness in the loop (dropout); the data order has its own.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoints: CheckpointStore,
    step: int,
    position: StreamPosition,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    result: TrainResult,
) -> None:
    """Save everything a resumed run needs to continue exactly; commit it once all ranks wrote."""
    rank_state = {"rng": _rng_state(), "position": vars(position)}
    checkpoints.write_file(step, _rank_file(accelerator.process_index), to_bytes(rank_state))
    if accelerator.is_main_process:
        state = {
            "model": accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
            "result": result.progress(),
        }
        checkpoints.write_file(step, STATE_FILE, to_bytes(state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        names = [STATE_FILE] + [_rank_file(r) for r in range(accelerator.num_processes)]
        checkpoints.commit(step, names, {"world": accelerator.num_processes})
    accelerator.wait_for_everyone()


def _parse_checkpoint(
    checkpoint: Checkpoint, record: dict[str, Any], model: torch.nn.Module, rank: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The payloads of a checkpoint, checked against this run before anything is loaded.

    Raises on anything a crafted or foreign checkpoint could hold: a payload that is not plain
    tensors and data (``weights_only``), missing entries, or weights of another shape.
    """
    state = from_bytes(checkpoint.files[STATE_FILE])
    rank_state = from_bytes(checkpoint.files[_rank_file(rank)])
    for key in ("model", "optimizer", "scheduler", "result"):
        if not isinstance(state.get(key), dict):
            raise ValueError(f"no {key} state")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k: getattr(v, "shape", None) for k, v in state["model"].items()}
    if found != expected:
        raise ValueError("its weights do not fit this model")
    StreamPosition(**rank_state["position"])
    if not isinstance(rank_state.get("rng"), dict):
        raise ValueError("no random generator state")
    return state, rank_state


def resume_checkpoint(
    checkpoints: CheckpointStore,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    result: TrainResult,
    log: logging.Logger | logging.LoggerAdapter,
) -> StreamPosition | None:
    """Load the newest committed checkpoint that is sound into the run; return the data
    position to go on from, or None to start afresh. One that fails to load is skipped for
    the one before, as a damaged one is."""
    rank = accelerator.process_index
    unwrapped = accelerator.unwrap_model(model)
    for checkpoint, record in checkpoints.verified([STATE_FILE, _rank_file(rank)]):
        if record.get("world") != accelerator.num_processes:
            log.warning(
                "checkpoint at step %d was saved by %s process(es), this run has %d: skipped",
                checkpoint.step,
                record.get("world"),
                accelerator.num_processes,
            )
            continue
        try:
            state, rank_state = _parse_checkpoint(checkpoint, record, unwrapped, rank)
        except Exception as err:  # noqa: BLE001 - any failure means: not this checkpoint
            log.warning(
                "checkpoint at step %d does not load (%s: %s); skipped",
                checkpoint.step,
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
            )
            continue
        unwrapped.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler") is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        _set_rng_state(rank_state["rng"])
        for name in result.progress():
            if name in state["result"]:
                setattr(result, name, state["result"][name])
        result.resumed_from = checkpoint.step
        log.info("resuming from the checkpoint at step %d", checkpoint.step)
        return StreamPosition(**rank_state["position"])
    return None


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` means bf16 on GPUs that support it, fp16 on other GPUs, none on CPU."""
    if requested != "auto":
        if requested != "no" and not torch.cuda.is_available():
            raise ValueError(
                f"train.mixed_precision={requested!r} needs a CUDA GPU and none is visible; "
                "use 'auto' or 'no' on CPU"
            )
        return requested
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for this config; it counts accumulation micro-batches for us."""
    return Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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
) -> TrainResult:
    """Train the model in place; return the loss history and throughput.

    One optimizer step consumes ``gradient_accumulation_steps`` micro-batches per process.
    The scheduler is stepped once per optimizer step, so warmup and decay are in those steps.
    With ``checkpoints``, the run resumes from the newest committed checkpoint and saves one
    every ``checkpoint_interval`` steps and at the end. ``on_progress`` is called on the main
    process with each logged record (step, total_steps, loss, lr, tokens/s, elapsed).
    ``probe`` measures the model at each periodic validation, on the main process; what it
    returns joins that validation's record (the API-accuracy curve).
    """
    total_steps = config.total_steps(len(train_rows), accelerator.num_processes)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
    )
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=min(config.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    stream = BatchStream(
        train_rows,
        config.batch_size,
        config.seed,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    result = TrainResult(
        steps=0, tokens=0, seconds=0.0, mixed_precision=accelerator.mixed_precision
    )
    position = None
    if checkpoints is not None:
        position = resume_checkpoint(
            checkpoints, model, optimizer, scheduler, accelerator, result, log
        )
    batches = stream.iterate(position)
    tokens_per_step = config.rows_per_step(accelerator.num_processes) * train_rows.context_length
    log.info(
        "training %d optimizer steps: %d seqs * %d tokens * %d accumulation * %d process(es) = "
        "%s tokens per step; mixed precision %s on %s",
        total_steps,
        config.batch_size,
        train_rows.context_length,
        config.gradient_accumulation_steps,
        accelerator.num_processes,
        f"{tokens_per_step:,}",
        accelerator.mixed_precision,
        accelerator.device,
    )

    model.train()
    session_start = window_start = time.perf_counter()
    # A resumed run's clock goes on from the checkpoint's, so totals cover the whole run.
    start = session_start - result.seconds
    first_step = result.steps + 1
    window_steps = 0
    for step in range(first_step, total_steps + 1):
        micro_batches = []
        for _ in range(config.gradient_accumulation_steps):
            position, batch = next(batches)
            micro_batches.append(batch.to(accelerator.device))
        weights = [keytoken_weights(b, keytoken_ids, config.keytoken_alpha) for b in micro_batches]
        # The normalised loss divides by the weight of the whole optimizer step, on all processes,
        # so that every sample counts the same whatever micro-batch or process it landed in.
        step_weight = accelerator.reduce(torch.stack(weights).sum(), reduction="sum")
        step_loss = torch.zeros((), device=accelerator.device)
        step_ce = torch.zeros((), device=accelerator.device)
        for batch, weight in zip(micro_batches, weights, strict=True):
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(batch).logits
                sample_loss = per_sample_loss(batch, logits)
                if config.loss == "normalized":
                    loss = (sample_loss * weight).sum() / step_weight
                    # backward() divides by the accumulation steps and DDP averages over
                    # processes; undo both so the step's gradient is that of the weighted mean.
                    scaled = loss * config.gradient_accumulation_steps * accelerator.num_processes
                else:
                    loss = (sample_loss * weight).mean() / config.gradient_accumulation_steps
                    scaled = loss * config.gradient_accumulation_steps
                accelerator.backward(scaled)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach()
            step_ce += sample_loss.detach().mean() / config.gradient_accumulation_steps
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        result.steps = step
        result.tokens += tokens_per_step
        window_steps += 1

        if step % config.log_interval == 0 or step == total_steps:
            now = time.perf_counter()
            loss_value = accelerator.reduce(step_loss, reduction="mean").item()
            ce_value = accelerator.reduce(step_ce, reduction="mean").item()
            tokens_per_second = window_steps * tokens_per_step / (now - window_start)
            record = {
                "step": step,
                "loss": loss_value,
                "ce": ce_value,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_second": tokens_per_second,
                "elapsed": now - start,
            }
            result.history.append(record)
            eta = (total_steps - step) * (now - session_start) / (step - first_step + 1)
            log.info(
                "step %d/%d (%d%%) | loss %.4f | ce %.4f | lr %.2e | %s tok/s | eta %s",
                step,
                total_steps,
                100 * step // total_steps,
                loss_value,
                ce_value,
                record["lr"],
                f"{tokens_per_second:,.0f}",
                _format_duration(eta),
            )
            if on_progress is not None and accelerator.is_main_process:
                on_progress({**record, "total_steps": total_steps})
            window_start, window_steps = time.perf_counter(), 0

        if step % config.eval_interval == 0 or step == total_steps:
            eval_start = time.perf_counter()
            evaluated = evaluate_loss(
                model,
                sequential_batches(valid_rows, config.batch_size, config.eval_batches),
                accelerator.device,
                accelerator.autocast,
            )
            record = {
                "step": step,
                "tokens": result.tokens,
                "valid_loss": evaluated.loss,
                "valid_perplexity": evaluated.perplexity,
            }
            if probe is not None and accelerator.is_main_process:
                record.update(probe(accelerator.unwrap_model(model)))
            result.evals.append(record)
            log.info(
                "step %d validation: %s",
                step,
                " | ".join(
                    f"{name} {_short(value)}"
                    for name, value in record.items()
                    if name not in ("step", "tokens")
                ),
            )
            # Validation time is not training time: leave it out of throughput figures.
            eval_seconds = time.perf_counter() - eval_start
            window_start += eval_seconds
            result.eval_seconds += eval_seconds

        if checkpoints is not None and (
            step % config.checkpoint_interval == 0 or step == total_steps
        ):
            saving_start = time.perf_counter()
            result.seconds = saving_start - start
            save_checkpoint(
                checkpoints, step, position, model, optimizer, scheduler, accelerator, result
            )
            saving_seconds = time.perf_counter() - saving_start
            log.info("step %d checkpoint saved in %.2f s", step, saving_seconds)
            window_start += saving_seconds
            result.checkpoint_seconds += saving_seconds
            result.checkpoints += 1

    result.seconds = time.perf_counter() - start
    if not math.isfinite(result.history[-1]["loss"]):
        raise FloatingPointError(
            "training diverged (loss is not finite); lower train.learning_rate or use bf16"
        )
    return result
