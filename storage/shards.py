"""Shard formats: documents as Parquet, token chunks as Arrow IPC files.

Document shards have columns ``id`` and ``content``. An output may instead be a *union*: its
``members.json`` part lists other committed outputs (one per corpus group), read in that order,
each with an optional part of its own that names the documents to skip (the duplicates that
dedup found across groups). Readers follow it, so training and evaluation read the union of
the groups without a copy. Token shards have one column ``input_ids``,
a fixed-size list of ``context_length`` integers, stored as uint16 when every id the tokenizer
can emit fits (a shard is then half the size), else uint32; each shard is memory-mapped
straight into a training batch. Every batch is range-checked before the cast: an id that does
not fit is an error, never a silent wrap.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from storage.errors import UserError
from storage.stages import (
    Manifest,
    StageRef,
    StageWriter,
    part_file,
    part_names,
    read_manifest,
    read_part,
)
from storage.store import DamagedObjectError, Store, StoreError

SPLITS = ("train", "valid")
MEMBERS_PART = "members.json"
TOKEN_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint32))


class TokenRangeError(UserError, ValueError):
    """A token id does not fit the shard's dtype: the tokenizer emits ids it did not declare."""


def token_dtype(id_bound: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``id_bound`` (the largest id the
    tokenizer can emit, plus one)."""
    for dtype in TOKEN_DTYPES:
        if id_bound - 1 <= np.iinfo(dtype).max:
            return dtype
    raise TokenRangeError(f"token ids up to {id_bound - 1:,} do not fit in uint32")


def shard_name(split: str, index: int, suffix: str) -> str:
    """Name of the ``index``-th shard of a split, sortable by index."""
    return f"{split}/shard-{index:05d}.{suffix}"


class DocumentShardWriter:
    """Buffers documents and writes them as Parquet shards of bounded size."""

    def __init__(self, writer: StageWriter, split: str, max_shard_bytes: int) -> None:
        self.writer = writer
        self.split = split
        self.max_shard_bytes = max_shard_bytes
        self.ids: list[str] = []
        self.contents: list[str] = []
        self.buffered_bytes = 0
        self.shards = 0
        self.documents = 0

    def add(self, doc_id: str, content: str) -> None:
        """Buffer one document; the caller flushes when ``full``."""
        self.ids.append(doc_id)
        self.contents.append(content)
        self.buffered_bytes += len(content)

    @property
    def full(self) -> bool:
        """Whether the buffer holds a shard's worth of code."""
        return self.buffered_bytes >= self.max_shard_bytes

    def flush(self) -> None:
        """Write whatever is buffered as one shard."""
        if not self.ids:
            return
        table = pa.table({"id": self.ids, "content": self.contents})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.writer.write_bytes(shard_name(self.split, self.shards, "parquet"), buffer.getvalue())
        self.shards += 1
        self.documents += len(self.ids)
        self.ids, self.contents, self.buffered_bytes = [], [], 0


@dataclass(frozen=True)
class Member:
    """One output of a union, with the part of the union that lists its skipped documents."""

    ref: StageRef
    drops: str | None = None


def union_members(store: Store, ref: StageRef, manifest: Manifest | None = None) -> list[Member]:
    """The members of a union output, in order; [] for an output that holds its own shards."""
    manifest = manifest or read_manifest(store, ref)
    if MEMBERS_PART not in manifest.parts:
        return []
    try:
        entries = json.loads(read_part(store, ref, MEMBERS_PART, manifest))
        members = []
        for entry in entries:
            stage, _, key = entry["prefix"].rpartition("/")
            drops = entry.get("drops")
            if drops is not None and drops not in manifest.parts:
                raise ValueError(f"no part {drops!r}")
            members.append(Member(StageRef(stage=stage, key=key), drops))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        problem = " ".join(str(err).split())[:200]  # one line, also for a validation error
        raise DamagedObjectError(
            f"{store.uri(ref.prefix)}/{MEMBERS_PART} is not a member list ({problem}); delete "
            f"{store.uri(ref.prefix)} and rerun"
        ) from None
    return members


def write_members(writer: StageWriter, members: list[Member]) -> None:
    """Write a union's member list (the drop parts must be written through ``writer`` too)."""
    writer.write_json(
        MEMBERS_PART,
        [{"prefix": m.ref.prefix, **({"drops": m.drops} if m.drops else {})} for m in members],
    )


def dropped_positions(
    store: Store, union: StageRef, drops: str | None, manifest: Manifest | None = None
) -> dict[str, set[int]]:
    """The positions (within each split, in shard order) of the documents a member skips."""
    if drops is None:
        return {split: set() for split in SPLITS}
    table = pq.read_table(io.BytesIO(read_part(store, union, drops, manifest)))
    found: dict[str, set[int]] = {split: set() for split in SPLITS}
    for split, position in zip(
        table["split"].to_pylist(), table["position"].to_pylist(), strict=True
    ):
        if split not in found or not isinstance(position, int) or position < 0:
            raise DamagedObjectError(f"{store.uri(union.prefix)}/{drops} is not a drop list")
        found[split].add(position)
    return found


def open_document_shard(
    store: Store,
    ref: StageRef,
    name: str,
    batch_size: int = 256,
    manifest: Manifest | None = None,
    skip: set[int] | None = None,
    first: int = 0,
) -> tuple[int, Iterator[list[str]]]:
    """One document shard, checked against its manifest: its number of rows, and its contents
    in batches. ``skip`` holds positions to leave out, counted from ``first`` at its first row.
    """
    parquet = pq.ParquetFile(io.BytesIO(read_part(store, ref, name, manifest)))

    def batches() -> Iterator[list[str]]:
        position = first
        for batch in parquet.iter_batches(batch_size=batch_size, columns=["content"]):
            texts = batch.column("content").to_pylist()
            if skip:
                texts = [t for i, t in enumerate(texts, position) if i not in skip]
            position += batch.num_rows
            if texts:
                yield texts

    return parquet.metadata.num_rows, batches()


def drop_digests(store: Store, union: StageRef) -> dict[str, str | None]:
    """Each member's prefix and the sha256 of its drop list (None: it drops nothing)."""
    manifest = read_manifest(store, union)
    return {
        m.ref.prefix: manifest.parts[m.drops].sha256 if m.drops else None
        for m in union_members(store, union, manifest)
    }


def member_drops(
    store: Store, union: StageRef, member: StageRef
) -> tuple[str | None, dict[str, set[int]]]:
    """What a union's member skips: the sha256 of its drop list (None: nothing) and, per split,
    the positions it lists."""
    manifest = read_manifest(store, union)
    for found in union_members(store, union, manifest):
        if found.ref.prefix == member.prefix:
            digest = manifest.parts[found.drops].sha256 if found.drops else None
            return digest, dropped_positions(store, union, found.drops, manifest)
    raise StoreError(f"{store.uri(union.prefix)} has no member {member.prefix}; rerun the pipeline")


def iter_document_batches(
    store: Store, ref: StageRef, split: str, batch_size: int = 256
) -> Iterator[list[str]]:
    """Yield the contents of a split's documents in batches, shard by shard, in order; a
    union's members one after another, without the documents each one skips."""
    manifest = read_manifest(store, ref)
    members = union_members(store, ref, manifest) or [Member(ref)]
    for member in members:
        skip = dropped_positions(store, ref, member.drops, manifest)[split]
        member_manifest = manifest if member.ref == ref else read_manifest(store, member.ref)
        first = 0
        for name in part_names(member_manifest, split):
            rows, batches = open_document_shard(
                store, member.ref, name, batch_size, member_manifest, skip, first
            )
            yield from batches
            first += rows


class TokenShardWriter:
    """Buffers fixed-length token rows and writes them as Arrow IPC shards."""

    def __init__(
        self,
        writer: StageWriter,
        split: str,
        context_length: int,
        dtype: np.dtype,
        rows: int,
        source: str = "the tokenizer",
    ) -> None:
        self.writer = writer
        self.source = source
        self.split = split
        self.context_length = context_length
        self.dtype = dtype
        self.rows_per_shard = rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.shard_rows: list[int] = []

    def add(self, rows: np.ndarray) -> None:
        """Add a (n, context_length) array of token ids; ids that do not fit are an error."""
        if rows.size == 0:
            return
        low, high = int(rows.min()), int(rows.max())
        if low < 0 or high > np.iinfo(self.dtype).max:
            raise TokenRangeError(
                f"{self.source} emitted token id {high if high > 0 else low:,}, which does "
                f"not fit the {self.dtype} shards sized from its vocabulary; the tokenizer's "
                "vocabulary does not declare all the ids it emits: fix or retrain it"
            )
        self.pending.append(rows.astype(self.dtype, copy=False))
        self.pending_rows += len(rows)
        while self.pending_rows >= self.rows_per_shard:
            block = np.concatenate(self.pending)
            self._write(block[: self.rows_per_shard])
            rest = block[self.rows_per_shard :]
            self.pending, self.pending_rows = ([rest] if len(rest) else []), len(rest)

    def flush(self) -> None:
        """Write the remaining rows as a last, smaller shard."""
        if self.pending_rows:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_rows = [], 0

    def _write(self, block: np.ndarray) -> None:
        flat = pa.array(block.reshape(-1), type=pa.from_numpy_dtype(self.dtype))
        column = pa.FixedSizeListArray.from_arrays(flat, self.context_length)
        table = pa.table({"input_ids": column})
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        name = shard_name(self.split, len(self.shard_rows), "arrow")
        self.writer.write_bytes(name, sink.getvalue().to_pybytes())
        self.shard_rows.append(len(block))


def load_token_shards(store: Store, ref: StageRef, split: str) -> list[np.ndarray]:
    """Memory-map every token shard of a split as a (rows, context_length) array, in order (a
    union's members one after another).

    Each shard is checked against its manifest; a remote store's shards are cached locally.
    """
    manifest = read_manifest(store, ref)
    members = union_members(store, ref, manifest)
    if members:
        return [a for m in members for a in load_token_shards(store, m.ref, split)]
    arrays = []
    for name in part_names(manifest, split):
        path = part_file(store, ref, name, manifest)
        table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        column = table.column("input_ids").combine_chunks()
        if not pa.types.is_fixed_size_list(column.type) or column.type.value_type not in (
            pa.uint16(),
            pa.uint32(),
        ):
            raise DamagedObjectError(
                f"{store.uri(ref.prefix)}/{name} holds {column.type}, not token rows"
            )
        values = column.values.to_numpy(zero_copy_only=True)
        arrays.append(values.reshape(len(column), column.type.list_size))
    return arrays
