"""The fast training paths give today's results: compiled, fused, chunked, micro-batched and
prefetched training against a plain eager loop, and the pieces each path is made of."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import get_scheduler

from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.data import BatchStream, TokenRows
from tasks.train.hooks import TrainHook
from tasks.train.loop import make_accelerator, train_model_loop
from tasks.train.loss import LOGIT_CHUNK_ELEMENTS, keytoken_weights, per_sample_loss
from tasks.train.model import build_model, gpt2_config, parameter_groups
from tasks.train.prefetch import StepPrefetcher
from tasks.train.trainer import (
    GPU_MEMORY_SHARE,
    DeviceMemory,
    Trainer,
    largest_micro_batch,
)

LOG = logging.getLogger("tests")
KEYS = [3, 5, 7]
VOCAB, CONTEXT = 64, 16
MODEL = ModelConfig(n_layer=2, n_embd=32, n_head=2, dropout=0.0)
STEPS = 50
CONFIG = TrainConfig(
    batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-3,
    warmup_steps=5,
    max_steps=STEPS,
    epochs=100,
    eval_interval=STEPS,
    eval_batches=1,
    log_interval=10,
    api_eval_cases=0,
    # fp32: these tests compare the arithmetic of the fast paths with the plain one, and bf16
    # (auto on a CPU with bf16 instructions) rounds differently on each path.
    mixed_precision="no",
)


def _rows(n=96):
    rng = np.random.default_rng(0)
    starts = rng.integers(0, VOCAB, n)
    steps = rng.integers(1, 4, n)
    rows = (starts[:, None] + steps[:, None] * np.arange(CONTEXT)) % VOCAB
    return TokenRows([rows.astype(np.uint16)])


def _model():
    return build_model(gpt2_config(MODEL, VOCAB, CONTEXT, 0), CONFIG.seed)


def eager_reference_losses(config: TrainConfig, rows: TokenRows) -> list[float]:
    """Per-step losses of the loop as it was before the fast paths: the model's full logits,
    the per-sample loss from them, one backward per batch, unfused AdamW, no compilation."""
    model = _model()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
        foreach=False,
    )
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=STEPS,
    )
    batches = BatchStream(rows, config.batch_size, config.seed).iterate()
    model.train()
    losses = []
    for _ in range(STEPS):
        step = [next(batches)[1] for _ in range(config.gradient_accumulation_steps)]
        weights = [keytoken_weights(b, KEYS, config.keytoken_alpha) for b in step]
        total = torch.stack(weights).sum()
        step_loss = 0.0
        for batch, weight in zip(step, weights, strict=True):
            loss = (per_sample_loss(batch, model(batch).logits) * weight).sum() / total
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    return losses


class StepLosses(TrainHook):
    """Reads every step's loss off the device (a test may; the loop does not)."""

    def __init__(self):
        self.losses = []

    def on_step(self, loop, output):
        self.losses.append(output.loss.item())


def _our_losses(**settings) -> list[float]:
    config = CONFIG.model_copy(update=settings)
    record = StepLosses()
    rows = _rows()
    train_model_loop(
        _model(), rows, rows, KEYS, config, make_accelerator(config), LOG, hooks=[record]
    )
    return record.losses


@pytest.mark.slow
def test_compiled_fused_micro_batched_training_matches_the_eager_loop_over_50_steps(monkeypatch):
    reference = eager_reference_losses(CONFIG, _rows())
    # Logits in chunks of 7 rows, the last one short, as a real vocabulary's are.
    monkeypatch.setitem(LOGIT_CHUNK_ELEMENTS, "cpu", 7 * VOCAB)
    # One micro-batch for the step's 8 rows, compiled; and three uneven micro-batches.
    compiled = _our_losses(compile=True, micro_batch_size=8)
    uneven = _our_losses(compile=False, micro_batch_size=3)
    assert len(compiled) == len(uneven) == STEPS
    assert reference[-1] < reference[0] - 0.5  # it learns: the comparison is not of noise
    np.testing.assert_allclose(compiled, reference, rtol=0, atol=1e-4)
    np.testing.assert_allclose(uneven, reference, rtol=0, atol=1e-4)


def test_auto_micro_batch_is_the_largest_that_fits():
    tried = []

    def fits(size):
        tried.append(size)
        return size <= 10

    assert largest_micro_batch(64, fits) == 8
    assert tried == [64, 32, 16, 8]
    assert largest_micro_batch(24, lambda size: size <= 7) == 6  # 24, 12, 6
    assert largest_micro_batch(5, lambda size: False) == 1  # one row always runs


class _RowsMemory(DeviceMemory):
    """A device whose trial peak grows with the rows seen by the model's forward pass."""

    def __init__(self, model, bytes_per_row, total):
        self.bytes_per_row, self.total_bytes, self.rows = bytes_per_row, total, 0
        model.transformer.register_forward_pre_hook(lambda module, args: self._saw(args[0]))

    def _saw(self, input_ids):
        self.rows = max(self.rows, input_ids.shape[0])

    def total(self):
        return self.total_bytes

    def reset_peak(self):
        self.rows = 0

    def peak(self):
        return self.rows * self.bytes_per_row


def test_auto_micro_batch_takes_the_largest_trial_that_fits_and_leaves_no_trace():
    config = CONFIG.model_copy(update={"micro_batch_size": "auto"})  # 8 rows a step
    model = _model()
    trainer = Trainer(model, config, make_accelerator(config), KEYS, total_steps=1)
    optimizer_bytes = 2 * 4 * sum(p.numel() for p in model.parameters())
    # Room for 5 rows beside the optimizer's state (at the 90% share): 8 fails, 4 fits.
    memory = _RowsMemory(model, 1000, (optimizer_bytes + 5 * 1000) / GPU_MEMORY_SHARE)
    torch.manual_seed(3)
    expected_random = torch.rand(1)
    torch.manual_seed(3)
    trainer.size_micro_batches(CONTEXT, LOG, memory)
    assert trainer.micro_batch_size == 4
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.rand(1), expected_random)  # the trials drew nothing from it


def test_auto_micro_batch_on_cpu_keeps_the_batch_size():
    config = CONFIG.model_copy(update={"micro_batch_size": "auto"})
    trainer = Trainer(_model(), config, make_accelerator(config), KEYS, total_steps=1)
    trainer.size_micro_batches(CONTEXT, LOG)
    assert trainer.micro_batch_size == config.batch_size


def test_prefetched_steps_are_the_stream_in_order_with_their_positions():
    rows = _rows()
    stream = BatchStream(rows, 4, seed=1)
    expected = stream.iterate()
    prefetcher = StepPrefetcher(stream.iterate(), 2, steps=30, device=torch.device("cpu"))
    try:
        for _ in range(30):
            position, step_rows = prefetcher.next()
            first, second = next(expected), next(expected)
            assert position == second[0]
            assert torch.equal(step_rows, torch.cat([first[1], second[1]]))
    finally:
        prefetcher.close()


def test_a_failing_row_source_is_raised_in_training_and_close_never_hangs():
    def failing():
        yield None, torch.zeros(2, 4, dtype=torch.long)
        raise OSError("shard unreadable")

    prefetcher = StepPrefetcher(failing(), 2, steps=5, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="reading the training rows failed: shard unreadable"):
        prefetcher.next()
    prefetcher.close()
    # A prefetcher stopped while it waits to hand over a step stops too.
    endless = BatchStream(_rows(), 4, seed=1).iterate()
    blocked = StepPrefetcher(endless, 1, steps=1000, device=torch.device("cpu"), depth=1)
    blocked.close()
    assert not blocked.thread.is_alive()
