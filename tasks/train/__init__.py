"""Stage train: GPT-2 from scratch on the token shards with the Accelerate loop, plain torch;
``{store}/train/{key}``. Prefect only in ``task`` and ``progress``."""

from tasks.stage import Stage

TRAIN = Stage(
    "train",
    inputs=("tokenize", "tokenizer"),
    # launch decides between this process and one process per GPU; its closure is the loop.
    code="tasks.train.launch",
    libraries=("torch", "transformers", "accelerate"),
    sections=("model", "train"),
)
