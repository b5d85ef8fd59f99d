"""The key-token weighted loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.train.loss import (
    LOGIT_CHUNK_ELEMENTS,
    chunked_weighted_loss,
    course_weighted_loss,
    keytoken_weights,
    normalized_weighted_loss,
    per_sample_loss,
    resolve_key_tokens,
)

# Vocabulary of 2; every position predicts p = [1/4, 3/4], so the cross-entropy of
# label 0 is ln 4 and of label 1 is ln(4/3).
LOGITS = torch.tensor([0.0, math.log(3.0)]).expand(2, 3, 2)
INPUTS = torch.tensor([[1, 0, 1], [0, 0, 0]])
LOSS_A = (math.log(4) + math.log(4 / 3)) / 2  # labels 0, 1
LOSS_B = math.log(4)  # labels 0, 0


def test_per_sample_loss_by_hand():
    assert per_sample_loss(INPUTS, LOGITS).tolist() == pytest.approx([LOSS_A, LOSS_B])


def test_weights_count_key_tokens_in_the_whole_sample():
    assert keytoken_weights(INPUTS, [1], alpha=1.0).tolist() == [3.0, 1.0]
    assert keytoken_weights(INPUTS, [1], alpha=2.0).tolist() == [6.0, 2.0]
    assert keytoken_weights(INPUTS, [], alpha=1.0).tolist() == [1.0, 1.0]


def test_course_loss_by_hand():
    expected = (3 * LOSS_A + 1 * LOSS_B) / 2
    assert course_weighted_loss(INPUTS, LOGITS, [1]).item() == pytest.approx(expected)
    assert course_weighted_loss(INPUTS, LOGITS, [1], alpha=2.0).item() == pytest.approx(
        2 * expected
    )


def test_normalized_loss_by_hand():
    expected = (3 * LOSS_A + 1 * LOSS_B) / 4
    assert normalized_weighted_loss(INPUTS, LOGITS, [1]).item() == pytest.approx(expected)
    # alpha cancels in the normalised form
    assert normalized_weighted_loss(INPUTS, LOGITS, [1], alpha=5.0).item() == pytest.approx(
        expected
    )
    # with a step-wide total weight, a micro-batch contributes its share only
    share = normalized_weighted_loss(INPUTS, LOGITS, [1], total_weight=torch.tensor(8.0))
    assert share.item() == pytest.approx((3 * LOSS_A + LOSS_B) / 8)


def test_course_loss_matches_the_course_implementation():
    torch.manual_seed(0)
    inputs = torch.randint(0, 50, (4, 16))
    logits = torch.randn(4, 16, 50)
    keytoken_ids = [3, 7]
    # The course's function, as published.
    shift_labels = inputs[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    loss = torch.nn.CrossEntropyLoss(reduction="none")(
        shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1)
    )
    loss_per_sample = loss.view(shift_logits.size(0), shift_logits.size(1)).mean(axis=1)
    weights = torch.stack([(inputs == kt).float() for kt in keytoken_ids]).sum(axis=[0, 2])
    expected = (loss_per_sample * (1.0 + weights)).mean()
    assert course_weighted_loss(inputs, logits, keytoken_ids).item() == pytest.approx(
        expected.item()
    )


def test_key_tokens_keep_only_single_tokens(tokenizer):
    ids, dropped = resolve_key_tokens(tokenizer, ["pd", "zzqxj"])
    assert "'zzqxj': 5 tokens" in dropped and "' zzqxj': 6 tokens" in dropped
    for token_id in ids:
        assert len(tokenizer.decode([token_id]).strip()) > 0


def test_empty_and_unknown_key_tokens_are_never_counted(tokenizer):
    from tasks.train.config import TrainConfig

    with pytest.raises(ValueError, match="empty key token"):
        TrainConfig(key_tokens=["plt", ""])
    # A word that is the unknown (here also end-of-text) token would up-weight every sample
    # that holds it, and an empty word every space: neither gets an id.
    ids, dropped = resolve_key_tokens(tokenizer, ["", "  ", "<|endoftext|>"])
    assert ids == []
    assert "'': empty" in dropped and "'  ': empty" in dropped
    assert "'<|endoftext|>': the unknown or a special token" in dropped
    assert tokenizer.eos_token_id not in resolve_key_tokens(tokenizer, ["pd", "plt"])[0]


def test_the_chunked_loss_and_its_gradients_equal_the_full_logits_path(monkeypatch):
    monkeypatch.setitem(LOGIT_CHUNK_ELEMENTS, "cpu", 7 * 50)  # chunks of 7 rows; 3 x 8 = 24
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    embedding = torch.randn(50, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    inputs = torch.randint(0, 50, (3, 9), generator=generator)
    scale = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)

    loss, sample_ce = chunked_weighted_loss(hidden, embedding, inputs, scale)
    (3 * loss).backward()
    chunked_grads = hidden.grad.clone(), embedding.grad.clone()
    hidden.grad = embedding.grad = None
    reference_ce = per_sample_loss(inputs, hidden @ embedding.t())
    reference = (reference_ce * scale).sum()
    (3 * reference).backward()

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(sample_ce, reference_ce.float(), rtol=1e-6, atol=1e-6)
    assert not sample_ce.requires_grad
    torch.testing.assert_close(chunked_grads[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grads[1], embedding.grad, rtol=1e-5, atol=1e-6)
