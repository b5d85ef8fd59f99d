"""Stage tokenizer: train a byte-level BPE on the filtered documents, or load a pretrained one;
``{store}/tokenizer/{key}``."""

from tasks.stage import Stage

TOKENIZER = Stage(
    "tokenizer", inputs=("filter",), code="tasks.tokenizer.build", libraries=("tokenizers",)
)
