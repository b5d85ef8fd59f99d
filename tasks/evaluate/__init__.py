"""Stage evaluate: perplexity, held-out API completions, the course's prompts and (optional)
HumanEval; ``{store}/evaluate/{key}``."""

from tasks.stage import Stage

EVALUATE = Stage(
    "evaluate",
    inputs=("train", "tokenize", "tokenizer", "filter"),
    code="tasks.evaluate.build",
    libraries=("torch", "transformers"),
)
