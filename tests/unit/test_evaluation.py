"""Perplexity: exp(total NLL / predicted tokens), beside the course's exp(mean batch loss)."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tasks.train.data import TokenRows, sequential_batches
from tasks.train.evaluation import EvalResult, evaluate_loss


class UniformModel(torch.nn.Module):
    """Predicts every token with the same probability: perplexity is the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def _rows(n: int, length: int = 8, vocab: int = 16) -> TokenRows:
    rng = np.random.default_rng(0)
    return TokenRows([rng.integers(0, vocab, (n, length)).astype(np.uint16)])


def test_uniform_model_has_perplexity_equal_to_vocab():
    result = evaluate_loss(
        UniformModel(16), sequential_batches(_rows(10), 4), "cpu", contextlib.nullcontext
    )
    assert result.perplexity == pytest.approx(16.0)
    assert result.tokens == 10 * 7  # every position but the first is predicted


def test_perplexity_matches_transformers_loss_on_one_batch():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=16, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    )
    rows = _rows(6)
    result = evaluate_loss(model, sequential_batches(rows, 6), "cpu", contextlib.nullcontext)
    batch = rows.take(np.arange(6))
    model.eval()
    with torch.no_grad():
        reference = model(batch, labels=batch).loss.item()
    assert result.perplexity == pytest.approx(math.exp(reference), rel=1e-5)


def test_course_perplexity_weights_a_short_last_batch_like_a_full_one():
    result = EvalResult(total_nll=3 * 2.0 + 1 * 4.0, tokens=4, batch_losses=[2.0, 4.0])
    assert result.perplexity == pytest.approx(math.exp(10 / 4))
    assert result.course_perplexity == pytest.approx(math.exp(3.0))
