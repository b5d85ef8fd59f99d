"""Stage publish: the model, its tokenizer and model card, behind a quality gate;
``{store}/publish/{model_name}/{key}``, with ``LATEST`` beside the versions."""

from tasks.stage import Stage

PUBLISH = Stage(
    "publish",
    inputs=("corpus", "filter", "tokenizer", "tokenize", "train", "evaluate"),
    code="tasks.publish.build",
    libraries=("transformers",),
)
