"""Stage tokenize: each group's documents as 128-token rows in Arrow shards
(``{store}/tokenize/groups/{key}``), joined into one output (``{store}/tokenize/{key}``)."""

from tasks.stage import Stage

TOKENIZE = Stage(
    "tokenize",
    inputs=("filter", "tokenizer"),
    code="tasks.tokenize.join",
    group_code="tasks.tokenize.build",
    libraries=("tokenizers",),
)
