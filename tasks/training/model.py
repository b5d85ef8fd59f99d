"""Build a GPT-2 from scratch and group its parameters for AdamW."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tasks.training.config import ModelConfig


def gpt2_config(
    model: ModelConfig, vocab_size: int, context_length: int, eos_token_id: int
) -> GPT2Config:
    """The transformers config of our GPT-2: GELU (GPT-2's tanh form), positions = context."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        n_embd=model.n_embd,
        n_layer=model.n_layer,
        n_head=model.n_head,
        activation_function="gelu_new",
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
