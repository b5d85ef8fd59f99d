"""What the training loop calls around its steps: progress lines, validation, checkpoints.

A hook is any object with the methods of ``TrainHook``; the loop calls every hook's
``on_step`` after each optimizer step, ``on_eval`` after each validation and
``on_checkpoint`` once a checkpoint is committed (on the main process). The loop's own work
beside stepping (logging, validation, checkpoints, progress reports) is done by the hooks
below; tests and tools add their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accelerate import Accelerator

from tasks.train.config import TrainConfig
from tasks.train.data import StreamPosition, TokenRows, sequential_batches
from tasks.train.evaluation import evaluate_loss
from tasks.train.result import TrainResult
from tasks.train.state import CheckpointReport, CheckpointSaver
from tasks.train.trainer import StepOutput, Trainer

# Called with each logged step's record (step, total_steps, loss, lr, tokens_per_second).
ProgressCallback = Callable[[dict[str, Any]], None]


class TrainHook:
    """The calls a hook may take; each does nothing unless overridden."""

    def on_step(self, loop: TrainingLoop, output: StepOutput) -> None:
        """After each optimizer step, on every process."""

    def on_eval(self, loop: TrainingLoop, record: dict[str, Any]) -> None:
        """After each validation, on every process, with its record."""

    def on_checkpoint(self, loop: TrainingLoop, report: CheckpointReport) -> None:
        """Once a checkpoint is committed, on the main process."""


@dataclass
class TrainingLoop:
    """What hooks see of the run."""

    config: TrainConfig
    accelerator: Accelerator
    trainer: Trainer
    result: TrainResult
    total_steps: int
    tokens_per_step: int
    log: logging.Logger | logging.LoggerAdapter
    start: float
    """perf_counter at the run's start (a resumed run's goes back by its saved seconds)."""
    session_start: float
    """perf_counter when this process began stepping."""
    first_step: int
    position: StreamPosition = field(default_factory=StreamPosition)
    """The data stream's position after the current step."""
    hooks: list[TrainHook] = field(default_factory=list)

    def is_last(self, step: int) -> bool:
        """Whether ``step`` is the run's final optimizer step."""
        return step == self.total_steps

    def paused_seconds(self) -> float:
        """Seconds so far spent on validation and on holding for checkpoints."""
        return self.result.eval_seconds + self.result.checkpoint_seconds


def short(value: Any) -> str:
    """A figure for a log line: floats to four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_duration(seconds: float) -> str:
    """12m05s, or 7s."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog(TrainHook):
    """Every ``log_interval`` steps and at the end: read the step's loss off the device (the
    loop's only host sync), add a history record, log a line, report progress."""

    def __init__(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_progress = on_progress
        self.window_start: float | None = None
        self.window_paused = 0.0
        self.window_steps = 0

    def on_step(self, loop: TrainingLoop, output: StepOutput) -> None:
        if self.window_start is None:
            self.window_start, self.window_paused = time.perf_counter(), loop.paused_seconds()
        self.window_steps += 1
        step, config = output.step, loop.config
        if step % config.log_interval and not loop.is_last(step):
            return
        accelerator = loop.accelerator
        # Each process holds its share of a normalised loss, and a mean of a course loss.
        reduction = "sum" if config.loss == "normalized" else "mean"
        loss = accelerator.reduce(output.loss, reduction=reduction).item()
        ce = accelerator.reduce(output.ce, reduction="mean").item()
        now = time.perf_counter()
        # Validation and checkpoints are not training time: leave them out of throughput.
        seconds = now - self.window_start - (loop.paused_seconds() - self.window_paused)
        record = {
            "step": step,
            "loss": loss,
            "ce": ce,
            "lr": loop.trainer.scheduler.get_last_lr()[0],
            "tokens_per_second": self.window_steps * loop.tokens_per_step / seconds,
            "elapsed": now - loop.start,
        }
        loop.result.history.append(record)
        done = step - loop.first_step + 1
        eta = (loop.total_steps - step) * (now - loop.session_start) / done
        loop.log.info(
            "step %d/%d (%d%%) | loss %.4f | ce %.4f | lr %.2e | %s tok/s | eta %s",
            step,
            loop.total_steps,
            100 * step // loop.total_steps,
            loss,
            ce,
            record["lr"],
            f"{record['tokens_per_second']:,.0f}",
            format_duration(eta),
        )
        if self.on_progress is not None and accelerator.is_main_process:
            self.on_progress({**record, "total_steps": loop.total_steps})
        self.window_start, self.window_paused = time.perf_counter(), loop.paused_seconds()
        self.window_steps = 0


class PeriodicValidation(TrainHook):
    """Every ``eval_interval`` steps and at the end: validation loss on up to ``eval_batches``
    batches, and what the probe measures (the API-accuracy curve), then ``on_eval``."""

    def __init__(
        self,
        valid_rows: TokenRows,
        probe: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.valid_rows = valid_rows
        self.probe = probe

    def on_step(self, loop: TrainingLoop, output: StepOutput) -> None:
        step, config = output.step, loop.config
        if step % config.eval_interval and not loop.is_last(step):
            return
        start = time.perf_counter()
        accelerator = loop.accelerator
        evaluated = evaluate_loss(
            loop.trainer.model,
            sequential_batches(self.valid_rows, config.batch_size, config.eval_batches),
            accelerator.device,
            accelerator.autocast,
        )
        record = {
            "step": step,
            "tokens": loop.result.tokens,
            "valid_loss": evaluated.loss,
            "valid_perplexity": evaluated.perplexity,
        }
        if self.probe is not None and accelerator.is_main_process:
            record.update(self.probe(loop.trainer.model))
        loop.result.evals.append(record)
        loop.log.info(
            "step %d validation: %s",
            step,
            " | ".join(
                f"{name} {short(value)}"
                for name, value in record.items()
                if name not in ("step", "tokens")
            ),
        )
        loop.result.eval_seconds += time.perf_counter() - start
        for hook in loop.hooks:
            hook.on_eval(loop, record)


class Checkpointing(TrainHook):
    """Every ``checkpoint_interval`` steps and at the end: save a checkpoint in the
    background; report each one committed to every hook's ``on_checkpoint``."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def on_step(self, loop: TrainingLoop, output: StepOutput) -> None:
        self._report(loop, self.saver.committed())
        step = output.step
        if step % loop.config.checkpoint_interval and not loop.is_last(step):
            return
        result = loop.result
        result.seconds = time.perf_counter() - loop.start
        state = {**loop.trainer.state(), "result": result.progress()}
        result.checkpoint_seconds += self.saver.save(step, loop.position, state)
        result.checkpoints += 1

    def finish(self, loop: TrainingLoop) -> None:
        """Wait for the checkpoint under way; report it."""
        self._report(loop, self.saver.close())

    def _report(self, loop: TrainingLoop, reports: list[CheckpointReport]) -> None:
        for report in reports:
            loop.log.info(
                "step %d checkpoint committed (training held %.2f s, then %.2f s in the "
                "background)",
                report.step,
                report.blocking_seconds,
                report.background_seconds,
            )
            for hook in loop.hooks:
                hook.on_checkpoint(loop, report)
