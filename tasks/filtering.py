"""Stage 2: keep data-science files, drop exact duplicates, split train/validation.

The keyword rule is the course's: keep a file if any keyword occurs anywhere in it. Duplicates
are found by a hash of the content with whitespace normalised. The split is decided by a hash of
each file's identity, so a file stays on the same side however the corpus is ordered or grown.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable

from prefect import task
from pydantic import Field, field_validator

import storage.shards
import tasks.corpus
from storage.shards import DocumentShardWriter
from storage.stages import StageRef, StageWriter, code_version, run_stage
from storage.store import Store
from tasks.common import IO_RETRIES, retry_on_io_error, stage_logger
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
    docs: Iterable[Document],
    config: FilterConfig,
    writer: StageWriter,
    read_stats: ReadStats,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Filter, deduplicate and split the documents into train/valid shards; return the counts.

    Raises a clear error when the corpus is empty or when nothing survives the filter.
    """
    shards = {
        split: DocumentShardWriter(writer, split, config.max_shard_bytes)
        for split in ("train", "valid")
    }
    seen_hashes: set[bytes] = set()
    counts = {"kept": 0, "duplicates": 0, "no_keyword": 0, "bytes_kept": 0}
    for doc in docs:
        if progress is not None and read_stats["read"] % PROGRESS_EVERY == 0:
            progress({**read_stats, **counts})
        if not contains_any_keyword(doc.content, config.keywords):
            counts["no_keyword"] += 1
            continue
        if config.deduplicate:
            digest = content_hash(doc.content)
            if digest in seen_hashes:
                counts["duplicates"] += 1
                continue
            seen_hashes.add(digest)
        split = (
            "valid" if is_validation(doc.id, config.valid_fraction, config.split_seed) else "train"
        )
        shards[split].add(doc.id, doc.content)
        counts["kept"] += 1
        counts["bytes_kept"] += len(doc.content)
    for shard in shards.values():
        shard.flush()

    counts.update(read_stats)
    counts["train_documents"] = shards["train"].documents
    counts["valid_documents"] = shards["valid"].documents
    counts["train_shards"] = shards["train"].shards
    counts["valid_shards"] = shards["valid"].shards
    if read_stats["read"] == 0:
        skipped = {k: v for k, v in read_stats.items() if k.startswith("skipped")}
        raise CorpusError(
            f"the corpus is empty: {read_stats['seen']} files seen, none readable as UTF-8 text "
            f"(skipped: {skipped}); point the corpus at Python source files"
        )
    if counts["kept"] == 0:
        raise FilterError(
            f"the keyword filter kept nothing: none of {read_stats['read']} files contains any of "
            f"{config.keywords}; widen filter.keywords or use a corpus with data-science code"
        )
    for split in ("train", "valid"):
        if counts[f"{split}_documents"] == 0:
            raise FilterError(
                f"the {split} split is empty ({counts['kept']} files kept, "
                f"valid_fraction={config.valid_fraction}); adjust filter.valid_fraction "
                "or read more files (corpus.max_files)"
            )
    return counts


@task(name="filter-by-keywords", retry_condition_fn=retry_on_io_error, **IO_RETRIES)
def filter_by_keywords(corpus: StageRef, config: FilterConfig, store_url: str) -> StageRef:
    """Stream the corpus, keep data-science files, deduplicate, split; write Parquet shards."""
    log = stage_logger()

    def build(writer: StageWriter) -> dict[str, int]:
        stats = ReadStats()

        def report(counts: dict[str, int]) -> None:
            log.info("filter: %d files read, %d kept", counts["read"], counts["kept"])

        return filter_documents(iter_documents(corpus, stats), config, writer, stats, report)

    version = code_version([sys.modules[__name__], tasks.corpus, storage.shards])
    ref = run_stage(Store(store_url), "documents", config, {"corpus": corpus}, version, build, log)
    log.info("filter: %s", ref.counts)
    return ref
