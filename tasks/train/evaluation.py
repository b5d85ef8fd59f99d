"""Perplexity on held-out rows, with the plain (unweighted) next-token loss."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EvalResult:
    """Summed loss over every predicted token, and the per-batch means the course averages."""

    total_nll: float
    tokens: int
    batch_losses: list[float]

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per predicted token."""
        return self.total_nll / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(total NLL / total predicted tokens): every token counts the same."""
        return math.exp(min(self.loss, 700.0))

    @property
    def course_perplexity(self) -> float:
        """The course's exp(mean of batch losses): a short last batch counts as a full one."""
        return math.exp(min(sum(self.batch_losses) / len(self.batch_losses), 700.0))


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], device, autocast
) -> EvalResult:
    """Run the model over the batches and sum the next-token loss of every position."""
    was_training = model.training
    model.eval()
    total, tokens, batch_losses = 0.0, 0, []
    try:
        for batch in batches:
            batch = batch.to(device)
            with autocast():
                logits = model(batch).logits
            nll = F.cross_entropy(
                logits[:, :-1, :].float().reshape(-1, logits.size(-1)),
                batch[:, 1:].reshape(-1),
                reduction="sum",
            ).item()
            count = batch[:, 1:].numel()
            total += nll
            tokens += count
            batch_losses.append(nll / count)
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no validation rows to evaluate on")
    return EvalResult(total_nll=total, tokens=tokens, batch_losses=batch_losses)
