"""Stage 2: keep data-science files, drop exact duplicates, split train/validation.

The keyword rule is the course's: keep a file if any keyword occurs anywhere in it. Duplicates
are found by a hash of the content with whitespace normalised. The split is decided by a hash of
each file's identity, so a file stays on the same side however the corpus is ordered or grown.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from functools import partial

from pydantic import Field, field_validator

import storage.shards
import tasks.corpus
from storage.shards import SPLITS, DocumentShardWriter
from storage.stages import StageRef, StageWriter
from storage.store import Store
from tasks.common import Stage, stage_logger
from tasks.corpus import CorpusError, Document, ReadStats, iter_documents
from tasks.params import StageParams

DEFAULT_KEYWORDS = ["pandas", "sklearn", "matplotlib", "seaborn"]
PROGRESS_EVERY = 2_000  # files read between progress lines


class FilterError(ValueError):
    """The filter left nothing to train or validate on."""


class FilterConfig(StageParams):
    """Which files to keep and how to split them."""

    keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_KEYWORDS), min_length=1)
    """Keep a file if any of these strings occurs in it (the course's rule)."""
    deduplicate: bool = True
    """Drop files whose whitespace-normalised content was already kept."""
    valid_fraction: float = Field(default=0.02, gt=0.0, lt=1.0)
    """Share of files that go to the validation split."""
    split_seed: int = 0
    """Changes which files land in validation, deterministically."""
    max_shard_bytes: int = Field(default=64 << 20, ge=1 << 10)
    """Bytes of code per Parquet shard."""

    @field_validator("keywords")
    @classmethod
    def _no_empty_keyword(cls, keywords: list[str]) -> list[str]:
        if any(not k for k in keywords):
            raise ValueError("an empty keyword would keep every file; remove it")
        return keywords


def contains_any_keyword(content: str, keywords: Iterable[str]) -> bool:
    """The course's rule: whether any keyword occurs in the content."""
    return any(keyword in content for keyword in keywords)


def content_hash(content: str) -> bytes:
    """A digest of the content with all runs of whitespace collapsed, for duplicate detection."""
    normalized = " ".join(content.split())
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def is_validation(doc_id: str, valid_fraction: float, seed: int = 0) -> bool:
    """Whether a file belongs to the validation split, by a hash of its identity."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction


def filter_documents(
    open_documents: Callable[[ReadStats, int], Iterable[Document]],
    config: FilterConfig,
    writer: StageWriter,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Filter, deduplicate and split the documents into train/valid shards; return the counts.

    ``open_documents(stats, skip)`` streams the corpus from source entry ``skip`` on, counting
    into ``stats``. Each time a shard fills, both splits are flushed and a progress record
    commits them with the read position and the duplicate hashes, so an interrupted run resumes
    there. Raises a clear error when the corpus is empty or nothing survives the filter.
    """
    shards = {split: DocumentShardWriter(writer, split, config.max_shard_bytes) for split in SPLITS}
    stats = ReadStats()
    counts = {"kept": 0, "duplicates": 0, "no_keyword": 0, "bytes_kept": 0}
    seen_hashes: set[bytes] = set()
    for state in writer.resumed_states:
        seen_hashes.update(bytes.fromhex(h) for h in state["hashes"])
    if writer.resumed_states:
        last = writer.resumed_states[-1]
        stats.update(last["read_stats"])
        counts.update(last["counts"])
        for split, (shard_count, documents) in last["shards"].items():
            shards[split].shards, shards[split].documents = shard_count, documents
    new_hashes: list[bytes] = []

    for doc in open_documents(stats, stats["seen"]):
        if progress is not None and stats["read"] % PROGRESS_EVERY == 0:
            progress({**stats, **counts})
        if not contains_any_keyword(doc.content, config.keywords):
            counts["no_keyword"] += 1
            continue
        if config.deduplicate:
            digest = content_hash(doc.content)
            if digest in seen_hashes:
                counts["duplicates"] += 1
                continue
            seen_hashes.add(digest)
            new_hashes.append(digest)
        split = (
            "valid" if is_validation(doc.id, config.valid_fraction, config.split_seed) else "train"
        )
        shards[split].add(doc.id, doc.content)
        counts["kept"] += 1
        counts["bytes_kept"] += len(doc.content)
        if shards[split].full:
            for shard in shards.values():
                shard.flush()
            writer.record_progress(
                {
                    "read_stats": dict(stats),
                    "counts": counts,
                    "shards": {s: [w.shards, w.documents] for s, w in shards.items()},
                    "hashes": [h.hex() for h in new_hashes],
                }
            )
            new_hashes = []
    for shard in shards.values():
        shard.flush()

    counts.update(stats)
    for split in SPLITS:
        counts[f"{split}_documents"] = shards[split].documents
        counts[f"{split}_shards"] = shards[split].shards
    _check_counts(counts, stats, config)
    return counts


def _check_counts(counts: dict[str, int], stats: ReadStats, config: FilterConfig) -> None:
    if stats["read"] == 0:
        skipped = {k: v for k, v in stats.items() if k.startswith("skipped")}
        raise CorpusError(
            f"the corpus is empty: {stats['seen']} files seen, none readable as UTF-8 text "
            f"(skipped: {skipped}); point the corpus at Python source files"
        )
    if counts["kept"] == 0:
        raise FilterError(
            f"the keyword filter kept nothing: none of {stats['read']} files contains any of "
            f"{config.keywords}; widen filter.keywords or use a corpus with data-science code"
        )
    for split in SPLITS:
        if counts[f"{split}_documents"] == 0:
            raise FilterError(
                f"the {split} split is empty ({counts['kept']} files kept, "
                f"valid_fraction={config.valid_fraction}); adjust filter.valid_fraction "
                "or read more files (corpus.max_files)"
            )


FILTER = Stage(
    "filter", inputs=("corpus",), code=(sys.modules[__name__], tasks.corpus, storage.shards)
)


@FILTER.task
def filter_by_keywords(corpus: StageRef, config: FilterConfig, store_url: str) -> StageRef:
    """Stream the corpus, keep data-science files, deduplicate, split; write Parquet shards."""
    log = stage_logger()

    def report(counts: dict[str, int]) -> None:
        log.info("filter: %d files read, %d kept", counts["read"], counts["kept"])

    def build(writer: StageWriter) -> dict[str, int]:
        documents = partial(iter_documents, Store(store_url), corpus)
        return filter_documents(documents, config, writer, report)

    return FILTER.run(store_url, FILTER.spec(config, {"corpus": corpus}), build, log)
