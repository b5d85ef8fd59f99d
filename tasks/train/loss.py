"""The course's key-token weighted loss, a normalised form of it, and the chunked form the
training loop computes it with."""

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
    input_ids: torch.Tensor, keytoken_ids: list[int] | torch.Tensor, alpha: float
) -> torch.Tensor:
    """Each sample's weight, alpha * (1 + number of key tokens in it): shape (batch,).

    ``keytoken_ids`` may be a tensor already on the device (the loop's, to copy it once)."""
    keys = torch.as_tensor(keytoken_ids, dtype=torch.long, device=input_ids.device)
    counts = torch.isin(input_ids, keys).sum(dim=1).float()  # no keys: zero counts
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


# Logit elements computed at once by the chunked loss: a chunk stays in a CPU's cache, and a
# GPU's chunk is large enough that the matmuls stay efficient.
LOGIT_CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**25}


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(token_weight * next-token NLL), from the final hidden states and the output
    embedding, a chunk of rows at a time, so the (rows, vocab) logits never exist whole.

    The gradient is computed in the forward pass, chunk by chunk (liger-kernel's fused
    linear cross-entropy does the same), and only scaled in the backward pass. Under autocast,
    the matmuls run in the autocast dtype and the softmax in fp32, as in the unchunked path.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, chunk_rows):
        device = hidden.device.type
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        )
        grad_hidden, nll = [], []
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(dtype)
                target = labels[start : start + chunk_rows, None]
                weights = token_weights[start : start + chunk_rows, None]
                logits = (h @ w.t()).float()
                target_logit = logits.gather(1, target)
                # One exp per logit, in place: the softmax, its normaliser and the NLL from it.
                peak = logits.amax(dim=-1, keepdim=True)
                grad = logits.sub_(peak).exp_()
                total = grad.sum(dim=-1, keepdim=True)
                nll.append((total.log() + peak - target_logit).squeeze(1))
                # d NLL / d logits = softmax - one_hot(target), weighted per token.
                grad = grad.mul_(weights / total).scatter_add_(1, target, -weights).to(dtype)
                grad_hidden.append((grad @ w).to(hidden.dtype))
                grad_weight.add_((grad.t() @ h).float())
        grad_hidden, nll = torch.cat(grad_hidden), torch.cat(nll)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(nll)
        return (nll * token_weights).sum(), nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None


# Not traced by torch.compile (the model around it is): compiled, this function's gradients
# came out wrong (4.6% off, or not finite; torch 2.13, CPU), and it is matmuls in the main.
@torch.compiler.disable
def chunked_weighted_loss(
    hidden: torch.Tensor,
    output_embedding: torch.Tensor,
    input_ids: torch.Tensor,
    sample_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i sample_scale_i * (mean next-token NLL of sample i), and each sample's mean NLL.

    ``hidden`` is the model's final hidden states (batch, positions, width) and
    ``output_embedding`` its (vocab, width) output matrix. With ``sample_scale`` = key-token
    weight / a step's total weight, this is the normalised loss; the per-sample NLL (detached)
    is the unweighted cross-entropy that progress lines report.
    """
    labels = input_ids[:, 1:]
    positions = labels.shape[1]
    token_weights = (sample_scale.float() / positions)[:, None].expand(labels.shape)
    vocab = output_embedding.shape[0]
    chunk = max(1, LOGIT_CHUNK_ELEMENTS.get(hidden.device.type, 2**21) // vocab)
    loss, nll = _ChunkedLinearCrossEntropy.apply(
        hidden[:, :-1].reshape(-1, hidden.shape[-1]),
        output_embedding,
        labels.reshape(-1),
        token_weights.reshape(-1),
        chunk,
    )
    return loss, nll.view(labels.shape).mean(dim=1)


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
