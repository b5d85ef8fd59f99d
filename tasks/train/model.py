"""Build a GPT-2 from scratch, wrap it with its training loss, and group its parameters."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tasks.train.config import ModelConfig
from tasks.train.loss import chunked_weighted_loss


def gpt2_config(
    model: ModelConfig, vocab_size: int, context_length: int, eos_token_id: int
) -> GPT2Config:
    """The transformers config of our GPT-2: GELU (GPT-2's tanh form, as PyTorch's one fused
    kernel rather than five elementwise ops), PyTorch's SDPA attention, positions = context."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        activation_function="gelu_pytorch_tanh",
        attn_implementation="sdpa",
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def build_model(config: GPT2Config, seed: int) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2, the same for the same seed."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices (linear and embedding weights), none on vectors.

    Selecting by dimension catches every bias and every LayerNorm weight; the course's
    name list ("LayerNorm.weight") matches none of GPT-2's ``ln_1``/``ln_2``/``ln_f``.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class KeyTokenLossModel(torch.nn.Module):
    """A GPT-2 language model with the key-token weighted loss as its forward pass.

    Training calls (and compiles, and wraps for multi-GPU) this, not the model: the loss is
    computed from the final hidden states in chunks, so the full logits are never made. The
    wrapped model itself stays plain, for validation, generation and saving.
    """

    def __init__(self, lm: GPT2LMHeadModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: torch.Tensor, sample_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sum(sample_scale * per-sample loss), and the per-sample loss (see the loss module)."""
        hidden = self.lm.transformer(input_ids).last_hidden_state
        return chunked_weighted_loss(hidden, self.lm.lm_head.weight, input_ids, sample_scale)
