"""Completing prompts with a trained model, within the model's context window."""

from __future__ import annotations

from transformers import pipeline

from storage.errors import UserError


class PromptTooLongError(UserError, ValueError):
    """The prompt leaves no room in the model's context for a completion."""


class ModelLoadError(UserError, ValueError):
    """A model folder or name could not be loaded as a text-generation model."""


def load_generator(model, tokenizer=None):
    """A ``transformers`` text-generation pipeline for a model object or folder."""
    try:
        return pipeline("text-generation", model=model, tokenizer=tokenizer)
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"could not load {model!r} as a text-generation model ({first[:300]}); give the "
            "folder of a published model"
        ) from None


def complete(generator, prompt: str, max_new_tokens: int, temperature: float = 0.0) -> str:
    """The model's completion of a prompt (greedy when temperature is 0).

    GPT-2 has learned positions only up to its context length, so the completion is cut to
    the room the prompt leaves.
    """
    context = generator.model.config.n_positions
    prompt_tokens = len(generator.tokenizer(prompt)["input_ids"])
    room = context - prompt_tokens
    if room <= 0:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens and the model's context holds {context}; "
            "shorten the prompt"
        )
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
    output = generator(
        prompt,
        max_new_tokens=min(max_new_tokens, room),
        return_full_text=False,
        **({"do_sample": False} | sampling),
    )
    return output[0]["generated_text"]
