"""The tokenize stage, per group: the filtered documents as fixed-length rows in Arrow shards.

It runs once per corpus group (``tokenize/groups/{key}``), keyed on the group's documents, the
files that dedup drops from it, the tokenizer and the settings: a group whose documents and
drops did not change is not tokenized again. ``tasks.tokenize.join`` lists the groups' shards
as one output.

Two chunking modes:

- ``course``: the course's ``return_overflowing_tokens=True`` semantics. Each file is cut into
  consecutive ``context_length`` pieces and the short last piece is dropped.
- ``packed``: files are joined with the end-of-text token and cut into rows; only the final
  remainder of each group's split is dropped, so almost no code is thrown away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal

import numpy as np
from pydantic import Field

from storage.shards import (
    SPLITS,
    TokenShardWriter,
    open_document_shard,
    token_dtype,
)
from storage.stages import StageRef, StageSpec, StageWriter, part_names, read_manifest
from storage.store import Store
from tasks.params import StageParams
from tasks.tokenize import TOKENIZE
from tasks.tokenizer.build import token_id_bound


class TokenizeConfig(StageParams):
    """How documents become training rows."""

    mode: Literal["course", "packed"] = "course"
    """With course, each file's short tail is dropped; with packed, files are joined with EOS
    and nothing is dropped."""
    context_length: int = Field(default=128, ge=8, le=8192)
    """Tokens per row (the course's context length is 128)."""
    rows_per_shard: int = Field(default=65_536, ge=1)
    """Most rows per Arrow shard (65,536 × 128 tokens × 2 bytes = 16 MiB); every document
    shard's rows start a new token shard, which is what lets the stage resume shard-wise."""
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
    """Token ids of each whole text, without special tokens, using the Rust tokenizer directly
    (its ``encode_batch_fast``: the same ids without the character offsets, which nothing here
    reads and which cost a quarter or more of the encoding time)."""
    backend = tokenizer.backend_tokenizer
    # A tokenizer.json may carry truncation or padding, and a transformers call with
    # truncation=True leaves truncation switched on in the shared backend: either would
    # silently cut every file short here.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return [enc.ids for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]


def tokenize_batches(
    batches: Iterable[list[str]],
    tokenizer,
    mode: str,
    packer: Packer,
    shards: TokenShardWriter,
    counts: Counter,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Tokenize a stream of document batches into rows, adding to the split's counts."""
    for texts in batches:
        token_lists = encode_batch(tokenizer, texts)
        if mode == "course":
            block = course_chunks(token_lists, packer.context_length)
        else:
            block = packer.add(token_lists)
        shards.add(block)
        counts["documents"] += len(texts)
        counts["tokens"] += sum(len(ids) for ids in token_lists)
        counts["rows"] += len(block)
        if progress is not None:
            progress(counts["documents"], counts["rows"])


def tokenize_documents(
    store: Store,
    documents: StageRef,
    tokenizer,
    config: TokenizeConfig,
    writer: StageWriter,
    progress: Callable[[str, int, int], None] | None = None,
    skip: dict[str, set[int]] | None = None,
) -> dict[str, int]:
    """Tokenize both splits of a filtered-documents output into token shards; return counts.

    ``skip`` holds, per split, the positions of documents to leave out (dedup's drops).
    Document shard by document shard: after each one its token rows are flushed and a progress
    record commits them with the packer's carry, so an interrupted run resumes at the next one.
    """
    vocab_size = token_id_bound(tokenizer)
    dtype = token_dtype(vocab_size)
    manifest = read_manifest(store, documents)
    resumed = writer.resumed_states[-1] if writer.resumed_states else None
    counts: dict[str, int] = (
        resumed["counts"]
        if resumed
        else {"context_length": config.context_length, "vocab_size": vocab_size}
    )
    for split in SPLITS:
        if resumed and SPLITS.index(split) < SPLITS.index(resumed["split"]):
            continue  # finished before the interruption; its counts are in ``counts``
        here = resumed if resumed and resumed["split"] == split else None
        names = part_names(manifest, split)
        shards = TokenShardWriter(
            writer,
            split,
            config.context_length,
            dtype,
            config.rows_per_shard,
            source=f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}",
        )
        packer = Packer(config.context_length, tokenizer.eos_token_id)
        split_counts = Counter({"documents": 0, "tokens": 0, "rows": 0})
        position = 0
        if here:
            shards.shard_rows = list(here["shard_rows"])
            packer.carry = np.asarray(here["carry"], dtype=np.int64).reshape(-1)
            split_counts.update(here["split_counts"])
            position = here["position"]
        split_progress = partial(progress, split) if progress else None
        for index in range(here["next_shard"] if here else 0, len(names)):
            rows, batches = open_document_shard(
                store,
                documents,
                names[index],
                config.batch_size,
                manifest,
                (skip or {}).get(split),
                position,
            )
            tokenize_batches(
                batches, tokenizer, config.mode, packer, shards, split_counts, split_progress
            )
            position += rows
            shards.flush()
            writer.record_progress(
                {
                    "split": split,
                    "next_shard": index + 1,
                    "position": position,
                    "carry": packer.carry.tolist(),
                    "split_counts": dict(split_counts),
                    "shard_rows": shards.shard_rows,
                    "counts": counts,
                }
            )
        split_counts["shards"] = len(shards.shard_rows)
        counts.update({f"{split}_{name}": value for name, value in split_counts.items()})
    return counts


def tokenize_spec(
    documents: StageRef, tokenizer: StageRef, config: TokenizeConfig, drops: str | None = None
) -> StageSpec:
    """Where the token shards of these documents (less the drops whose list has this sha256),
    tokenizer and config live."""
    params = {"tokenize": config.model_dump(mode="json"), "drops": drops}
    return TOKENIZE.spec(params, {"filter": documents, "tokenizer": tokenizer}, group=True)
