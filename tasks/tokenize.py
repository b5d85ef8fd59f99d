"""Stage 4: tokenize the filtered documents into fixed-length rows in Arrow shards.

Two chunking modes:

- ``course``: the course's ``return_overflowing_tokens=True`` semantics. Each file is cut into
  consecutive ``context_length`` pieces and the short last piece is dropped.
- ``packed``: files are joined with the end-of-text token and cut into rows; only the final
  remainder of the whole split is dropped, so no code is thrown away.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

import numpy as np
import tokenizers
from prefect import task
from pydantic import Field

import storage.shards
from storage.shards import TokenShardWriter, iter_document_batches, token_dtype
from storage.stages import StageRef, StageWriter, code_version, run_stage
from storage.store import Store
from tasks.common import IO_RETRIES, retry_on_io_error, stage_logger
from tasks.params import StageParams
from tasks.tokenizer import load_stage_tokenizer


class TokenizeConfig(StageParams):
    """How documents become training rows."""

    mode: Literal["course", "packed"] = "course"
    """``course`` drops each file's short tail; ``packed`` joins files with EOS, drops nothing."""
    context_length: int = Field(default=128, ge=8, le=8192)
    """Tokens per row (the course's context length is 128)."""
    rows_per_shard: int = Field(default=65_536, ge=1)
    """Rows per Arrow shard: 65,536 rows * 128 tokens * 2 bytes = 16 MiB."""
    batch_size: int = Field(default=256, ge=1)
    """Documents encoded per call to the tokenizer."""


def course_chunks(token_lists: Iterable[list[int]], context_length: int) -> np.ndarray:
    """Cut each token list into consecutive full rows, dropping each one's short tail."""
    rows = [
        np.asarray(ids[: len(ids) // context_length * context_length], dtype=np.int64).reshape(
            -1, context_length
        )
        for ids in token_lists
        if len(ids) >= context_length
    ]
    return np.concatenate(rows) if rows else np.empty((0, context_length), dtype=np.int64)


class Packer:
    """Joins token lists with an end-of-text token and cuts the stream into full rows."""

    def __init__(self, context_length: int, eos_token_id: int) -> None:
        self.context_length = context_length
        self.eos = eos_token_id
        self.carry = np.empty(0, dtype=np.int64)

    def add(self, token_lists: Iterable[list[int]]) -> np.ndarray:
        """Append documents (each followed by EOS); return the rows completed so far."""
        pieces = [self.carry]
        for ids in token_lists:
            pieces.append(np.asarray(ids, dtype=np.int64))
            pieces.append(np.asarray([self.eos], dtype=np.int64))
        stream = np.concatenate(pieces)
        full = len(stream) // self.context_length * self.context_length
        self.carry = stream[full:]
        return stream[:full].reshape(-1, self.context_length)

    @property
    def remainder(self) -> int:
        """Tokens waiting for a row; dropped if the stream ends here."""
        return len(self.carry)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each whole text, without special tokens, using the Rust tokenizer directly."""
    backend = tokenizer.backend_tokenizer
    # A tokenizer.json may carry truncation or padding, and a transformers call with
    # truncation=True leaves truncation switched on in the shared backend: either would
    # silently cut every file short here.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]


def tokenize_split(
    batches: Iterable[list[str]],
    tokenizer,
    config: TokenizeConfig,
    shards: TokenShardWriter,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Tokenize a stream of document batches into shards; return the split's counts."""
    packer = Packer(config.context_length, tokenizer.eos_token_id)
    documents = tokens = rows = 0
    for texts in batches:
        token_lists = encode_batch(tokenizer, texts)
        if config.mode == "course":
            block = course_chunks(token_lists, config.context_length)
        else:
            block = packer.add(token_lists)
        shards.add(block)
        documents += len(texts)
        tokens += sum(len(ids) for ids in token_lists)
        rows += len(block)
        if progress is not None:
            progress(documents, rows)
    shards.flush()
    return {
        "documents": documents,
        "tokens": tokens,
        "rows": rows,
        "shards": len(shards.shard_rows),
    }


def tokenize_documents(
    documents: StageRef,
    tokenizer,
    config: TokenizeConfig,
    writer: StageWriter,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Tokenize both splits of a filtered-documents output into token shards; return counts."""
    dtype = token_dtype(len(tokenizer))
    counts: dict[str, int] = {"context_length": config.context_length, "vocab_size": len(tokenizer)}
    for split in ("train", "valid"):
        shards = TokenShardWriter(
            writer, split, config.context_length, dtype, config.rows_per_shard
        )
        split_progress = partial(progress, split) if progress else None
        batches = iter_document_batches(documents, split, config.batch_size)
        split_counts = tokenize_split(batches, tokenizer, config, shards, split_progress)
        if split_counts["rows"] == 0:
            raise ValueError(
                f"the {split} split yields no {config.context_length}-token row "
                f"({split_counts['tokens']} tokens in {split_counts['documents']} files); "
                "use tokenize.mode=packed, a shorter context_length, or a larger corpus"
            )
        counts.update({f"{split}_{name}": value for name, value in split_counts.items()})
    return counts


@task(name="tokenize-to-shards", retry_condition_fn=retry_on_io_error, **IO_RETRIES)
def tokenize_to_shards(
    documents: StageRef, tokenizer: StageRef, config: TokenizeConfig, store_url: str
) -> StageRef:
    """Tokenize the filtered documents into fixed-length rows in Arrow shards."""
    log = stage_logger()
    loaded = load_stage_tokenizer(tokenizer)
    every = max(1, 20_000 // config.batch_size)
    calls = {"n": 0}

    def progress(split: str, docs: int, rows: int) -> None:
        calls["n"] += 1
        if calls["n"] % every == 0:
            log.info("tokenize %s: %d files, %d rows", split, docs, rows)

    build = partial(tokenize_documents, documents, loaded, config, progress=progress)
    inputs = {"documents": documents, "tokenizer": tokenizer}
    version = code_version([sys.modules[__name__], storage.shards], tokenizers.__version__)
    ref = run_stage(Store(store_url), "tokens", config, inputs, version, build, log)
    log.info("tokenize: %s", ref.counts)
    return ref
