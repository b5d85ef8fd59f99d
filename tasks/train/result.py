"""What a training run reports, and what of it a checkpoint keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
