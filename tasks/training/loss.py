"""The course's key-token weighted loss, and a normalised form of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample: shape (batch,)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = input_ids[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="none"
    )
    return token_loss.view(shift_labels.shape).mean(dim=1)


def keytoken_weights(
    input_ids: torch.Tensor, keytoken_ids: list[int], alpha: float
) -> torch.Tensor:
    """Each sample's weight, alpha * (1 + number of key tokens in it): shape (batch,)."""
    if keytoken_ids:
        keys = torch.tensor(keytoken_ids, device=input_ids.device)
        counts = torch.isin(input_ids, keys).sum(dim=1).float()
    else:
        counts = torch.zeros(input_ids.size(0), device=input_ids.device)
    return alpha * (1.0 + counts)


def course_weighted_loss(
    input_ids: torch.Tensor, logits: torch.Tensor, keytoken_ids: list[int], alpha: float = 1.0
) -> torch.Tensor:
    """The course's loss: mean over the batch of weight * per-sample loss."""
    weights = keytoken_weights(input_ids, keytoken_ids, alpha)
    return (per_sample_loss(input_ids, logits) * weights).mean()


def normalized_weighted_loss(
    input_ids: torch.Tensor,
    logits: torch.Tensor,
    keytoken_ids: list[int],
    alpha: float = 1.0,
    total_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean of per-sample losses: sum(weight * loss) / total weight.

    ``total_weight`` is the weight of the whole optimizer step (all micro-batches, all
    processes); it defaults to this batch's own.
    """
    weights = keytoken_weights(input_ids, keytoken_ids, alpha)
    if total_weight is None:
        total_weight = weights.sum()
    return (per_sample_loss(input_ids, logits) * weights).sum() / total_weight


def resolve_key_tokens(tokenizer, words: list[str]) -> tuple[list[int], list[str]]:
    """Token ids of the words and their space-prefixed forms that are single, ordinary tokens.

    Returns the ids, and a note on each form left out (to warn about): empty words, forms that
    are several tokens, and forms that map to the unknown or another special token (which
    would up-weight every sample holding it, not the word).
    """
    special = set(tokenizer.all_special_ids)
    ids, dropped = [], []
    for word in words:
        if not word.strip():
            dropped.append(f"{word!r}: empty")
            continue
        for form in (word, f" {word}"):
            encoded = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                dropped.append(f"{form!r}: {len(encoded)} tokens")
            elif encoded[0] in special:
                dropped.append(f"{form!r}: the unknown or a special token")
            else:
                ids.append(encoded[0])
    return sorted(set(ids)), dropped
