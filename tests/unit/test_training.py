"""Parameter groups, step arithmetic, data order, accumulation, and that the loop learns."""

from __future__ import annotations

import logging
from itertools import islice

import numpy as np
import pytest
import torch

from tasks.train import loop
from tasks.train.config import ModelConfig, NeedsGpuError, TrainConfig
from tasks.train.data import BatchStream, StreamPosition, TokenRows
from tasks.train.loop import make_accelerator, resolve_mixed_precision, train_model_loop
from tasks.train.loss import course_weighted_loss, normalized_weighted_loss
from tasks.train.model import build_model, gpt2_config, parameter_groups

LOG = logging.getLogger("tests")


def _tiny_model(vocab=64, context=16, seed=0):
    config = gpt2_config(
        ModelConfig(n_layer=1, n_embd=32, n_head=2, dropout=0.0), vocab, context, 0
    )
    return build_model(config, seed)


def _patterned_rows(n=256, context=16, vocab=64):
    # Learnable data: each row counts up from a random start.
    starts = np.random.default_rng(0).integers(0, vocab, n)
    return TokenRows([((starts[:, None] + np.arange(context)) % vocab).astype(np.uint16)])


def test_no_decay_on_biases_and_layer_norms():
    model = _tiny_model()
    decay, no_decay = parameter_groups(model, 0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, param in model.named_parameters():
        is_norm_or_bias = (
            ".ln_" in name or name.startswith("transformer.ln_f") or name.endswith("bias")
        )
        assert (id(param) in no_decay_ids) == is_norm_or_bias, name
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_total_steps_from_rows():
    config = TrainConfig(batch_size=4, gradient_accumulation_steps=2, epochs=1.0)
    assert config.total_steps(100) == 12  # 25 micro-batches -> 12 full optimizer steps
    assert config.total_steps(100, num_processes=2) == 6
    assert (
        TrainConfig(batch_size=4, gradient_accumulation_steps=2, max_steps=3).total_steps(100) == 3
    )
    with pytest.raises(ValueError, match="no full optimizer step"):
        config.total_steps(5)


def _batches(iterator, n):
    return [batch.tolist() for _, batch in islice(iterator, n)]


def test_batch_stream_is_deterministic_and_covers_each_row_once_per_epoch():
    rows = TokenRows([np.arange(40 * 2).reshape(40, 2).astype(np.uint16)])
    stream = BatchStream(rows, batch_size=4, seed=1)
    first = _batches(stream.iterate(), 10)
    assert first == _batches(stream.iterate(), 10)
    assert sorted(row[0] for batch in first for row in batch) == list(range(0, 80, 2))
    assert first != _batches(BatchStream(rows, batch_size=4, seed=2).iterate(), 10)


def test_batch_stream_resumes_at_a_position_and_splits_ranks():
    rows = TokenRows([np.arange(48).reshape(24, 2).astype(np.uint16)])
    stream = BatchStream(rows, batch_size=3, seed=0)  # 8 batches per epoch
    full = _batches(stream.iterate(), 20)
    assert _batches(stream.iterate(StreamPosition(epoch=1, batch=2)), 10) == full[10:20]
    seen = []
    for rank in (0, 1):
        ranked = BatchStream(rows, 3, 0, rank=rank, world=2)
        seen += [
            row[0]
            for batch in _batches(ranked.iterate(), ranked.batches_per_epoch)
            for row in batch
        ]
    assert sorted(seen) == list(range(0, 48, 2))


def _one_step(batch_size, accumulation, loss="normalized", micro_batch_size="auto"):
    model = _tiny_model()
    config = TrainConfig(
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        micro_batch_size=micro_batch_size,
        max_steps=1,
        warmup_steps=0,
        lr_scheduler="constant_with_warmup",
        learning_rate=1e-2,
        loss=loss,
        eval_batches=1,
        # fp32: these tests compare arithmetic exactly, and bf16 (auto on a CPU with bf16
        # instructions) rounds differently for each micro-batch shape.
        mixed_precision="no",
    )
    rows = _patterned_rows()
    result = train_model_loop(model, rows, rows, [3, 5, 7], config, make_accelerator(config), LOG)
    return model, result


@pytest.mark.parametrize("loss", ["normalized", "course"])
@pytest.mark.parametrize("micro_batch_size", ["auto", 3])
def test_accumulation_equals_one_big_batch(loss, micro_batch_size):
    big, big_result = _one_step(batch_size=8, accumulation=1, loss=loss)
    small, small_result = _one_step(4, 2, loss=loss, micro_batch_size=micro_batch_size)
    assert small_result.history[0]["loss"] == pytest.approx(big_result.history[0]["loss"], rel=1e-5)
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["no", "bf16"])  # bf16: autocast, also on CPU
def test_loop_learns(precision):
    model = _tiny_model()
    config = TrainConfig(
        batch_size=16,
        gradient_accumulation_steps=1,
        epochs=5,  # 256 rows / 16 = 16 steps an epoch
        max_steps=60,
        warmup_steps=5,
        learning_rate=1e-2,
        eval_interval=60,
        log_interval=10,
        mixed_precision=precision,
    )
    rows = _patterned_rows()
    result = train_model_loop(model, rows, rows, [], config, make_accelerator(config), LOG)
    assert result.mixed_precision == precision
    assert next(model.parameters()).dtype == torch.float32  # autocast keeps fp32 weights
    assert result.steps == 60
    assert result.history[-1]["ce"] < result.history[0]["ce"] - 1.0
    assert result.evals[-1]["valid_loss"] < np.log(64) - 1.0
    assert result.tokens == 60 * 16 * 16


def test_periodic_validations_record_tokens_and_what_the_probe_measured():
    model = _tiny_model()
    config = TrainConfig(
        batch_size=8,
        gradient_accumulation_steps=1,
        max_steps=4,
        warmup_steps=0,
        eval_interval=2,
        eval_batches=1,
        log_interval=2,
    )
    seen = []

    def probe(probed):
        # The probe gets the bare model, for generation, at each periodic validation.
        assert isinstance(probed, type(model))
        seen.append(probed.training)
        return {"api_accuracy": 0.25, "api_cases": 4}

    rows = _patterned_rows()
    result = train_model_loop(
        model, rows, rows, [], config, make_accelerator(config), LOG, probe=probe
    )
    assert [(r["step"], r["tokens"]) for r in result.evals] == [(2, 2 * 8 * 16), (4, 4 * 8 * 16)]
    assert all(r["api_accuracy"] == 0.25 and r["api_cases"] == 4 for r in result.evals)
    assert len(seen) == 2


@pytest.mark.parametrize("loss", ["normalized", "course"])
def test_the_logged_loss_is_the_loss_of_the_formula_on_the_first_rows(loss):
    _, result = _one_step(batch_size=4, accumulation=2, loss=loss, micro_batch_size=3)
    stream = BatchStream(_patterned_rows(), 4, TrainConfig().seed).iterate()
    rows = torch.cat([next(stream)[1], next(stream)[1]])
    model = _tiny_model()
    with torch.no_grad():
        logits = model(rows).logits
    formula = course_weighted_loss if loss == "course" else normalized_weighted_loss
    expected = formula(rows, logits, [3, 5, 7]).item()
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("requested", "native_bf16", "expected"),
    [("auto", True, "bf16"), ("auto", False, "no"), ("bf16", False, "bf16"), ("no", True, "no")],
)
def test_on_cpu_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(
    monkeypatch, requested, native_bf16, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native_bf16)
    assert resolve_mixed_precision(requested) == expected


def test_fp16_on_cpu_is_refused_with_what_to_use_instead(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NeedsGpuError, match="'auto', 'bf16' or 'no' on CPU"):
        resolve_mixed_precision("fp16")
