"""Stage 3: train a byte-level BPE tokenizer on the training split, or load an existing one.

The result is a folder that ``AutoTokenizer.from_pretrained(folder)`` loads, with
``<|endoftext|>`` as its end-of-text (and beginning and unknown) token, as GPT-2's.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import tokenizers
from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from storage.shards import iter_document_batches
from storage.stages import StageRef, StageSpec, StageWriter, code_version, part_folder, run_stage
from storage.store import Store, fetch_folder
from tasks.common import stage_logger, stage_task
from tasks.params import StageParams

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_DIR = "tokenizer"


class TokenizerError(ValueError):
    """A tokenizer could not be trained or loaded."""


class TokenizerConfig(StageParams):
    """Train a tokenizer, or name one to load."""

    pretrained: str | None = None
    """Load this tokenizer instead of training: a local folder, a store/fsspec URL or a Hub name."""
    vocab_size: int = Field(default=50_000, ge=260, le=1 << 20)
    """Size of the trained vocabulary (the course used about 50k)."""
    min_frequency: int = Field(default=2, ge=1)
    """A merge must occur this often in the training text."""
    max_training_bytes: int | None = Field(default=None, ge=1)
    """Train on at most this many bytes of the training split; None uses all of it."""


def train_bpe_tokenizer(
    texts: Iterator[list[str]], vocab_size: int, min_frequency: int
) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE tokenizer on batches of texts."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def limit_bytes(batches: Iterator[list[str]], max_bytes: int | None) -> Iterator[list[str]]:
    """Pass batches of texts through until ``max_bytes`` of text have gone by."""
    total = 0
    for batch in batches:
        yield batch
        total += sum(len(text) for text in batch)
        if max_bytes is not None and total >= max_bytes:
            return


def load_pretrained_tokenizer(name: str):
    """Load a tokenizer from a local folder, a store/fsspec folder URL or a Hub name."""
    if "://" in name:
        name = str(fetch_folder(name))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise TokenizerError(
            f"could not load tokenizer {name!r}: {err}. Give a folder holding tokenizer.json, "
            "or a Hub name when this machine can reach the Hub"
        ) from err
    if tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer {name!r} has no end-of-text token; GPT-2 training needs one"
        )
    return tokenizer


def build_tokenizer(
    config: TokenizerConfig, train_texts: Iterator[list[str]], writer: StageWriter
) -> dict[str, int]:
    """Train or load the tokenizer and save it as the stage's ``tokenizer/`` folder."""
    if config.pretrained:
        tokenizer = load_pretrained_tokenizer(config.pretrained)
    else:
        # The tokenizers library parallelises training itself; a forked DataLoader later must
        # not inherit its thread pool, so say so explicitly instead of getting a warning.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        texts = limit_bytes(train_texts, config.max_training_bytes)
        tokenizer = train_bpe_tokenizer(texts, config.vocab_size, config.min_frequency)
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        writer.put_dir(folder, TOKENIZER_DIR)
    return {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}


def load_stage_tokenizer(ref: StageRef):
    """Load the tokenizer that a committed tokenizer stage holds."""
    return AutoTokenizer.from_pretrained(str(tokenizer_folder(ref)))


def tokenizer_folder(ref: StageRef) -> Path:
    """A local folder holding the tokenizer of a committed tokenizer stage."""
    return part_folder(ref, TOKENIZER_DIR)


def tokenizer_spec(documents: StageRef, config: TokenizerConfig, **_) -> StageSpec:
    """Where the tokenizer for these documents and config lives."""
    # A loaded tokenizer does not depend on our documents; a trained one does.
    inputs = {} if config.pretrained else {"documents": documents}
    version = code_version([sys.modules[__name__]], tokenizers.__version__)
    return StageSpec.of("tokenizer", config, inputs, version)


@stage_task("train-tokenizer", tokenizer_spec)
def train_tokenizer(documents: StageRef, config: TokenizerConfig, store_url: str) -> StageRef:
    """Train a byte-level BPE tokenizer on the training split, or load the configured one."""
    log = stage_logger()
    texts = iter_document_batches(documents, "train", batch_size=1000)  # lazy: read if built
    build = partial(build_tokenizer, config, texts)
    ref = run_stage(Store(store_url), tokenizer_spec(documents, config), build, log)
    log.info("tokenizer: %s", ref.counts)
    return ref
