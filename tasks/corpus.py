"""Stage 1: resolve and stream the source corpus in bounded memory.

Three sources: Python files under local roots (by default the running interpreter's
site-packages, so a fresh machine has real code without a download), JSONL/Parquet files with a
``content`` column (local paths or fsspec URLs, globs allowed), or a Hugging Face dataset streamed
with ``datasets``.

The stage commits a *snapshot* of the source (the file listing with sizes and mtimes, or the
dataset's revision) rather than a copy of the raw code: its key changes when the corpus changes,
and the filter stage streams the documents from it without holding them in memory.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import site
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from storage.stages import (
    StageRef,
    StageSpec,
    StageWriter,
    code_version,
    read_manifest,
    read_part,
    run_stage,
)
from storage.store import Store
from tasks.common import stage_logger, stage_task
from tasks.params import StageParams

DEFAULT_HUB_DATASET = "huggingface-course/codeparrot-ds-train"
LISTING_PART = "listing.parquet"
SOURCE_PART = "source.json"


class CorpusError(ValueError):
    """The corpus could not be read or holds nothing usable."""


class CorpusConfig(StageParams):
    """Where the raw code comes from and how much of it to read."""

    source: Literal["python_files", "data_files", "hub"] = "python_files"
    """Which kind of source to read."""
    roots: list[str] = []
    """Folders searched for ``*.py`` files; empty means the interpreter's site-packages."""
    data_files: list[str] = []
    """JSONL or Parquet files (paths, fsspec URLs or globs) with a ``content`` column."""
    hub_dataset: str = DEFAULT_HUB_DATASET
    """Hugging Face dataset streamed when ``source`` is ``hub``."""
    hub_split: str = "train"
    """Split of the Hub dataset."""
    max_files: int | None = Field(default=None, ge=1)
    """Stop after reading this many files (for quick runs); None reads all."""
    max_bytes: int | None = Field(default=None, ge=1)
    """Stop after reading this many bytes of code; None reads all."""
    max_file_bytes: int = Field(default=1_000_000, ge=1)
    """Skip files larger than this: generated code and embedded data teach nothing."""


@dataclass(frozen=True)
class Document:
    """One source file: a stable identity (used for the split) and its text."""

    id: str
    content: str


def default_roots() -> list[str]:
    """The site-packages folders of the running interpreter."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(p for p in site.getsitepackages() if os.path.isdir(p))
    return sorted(roots)


def _spread_order(relpath: str) -> str:
    # Order files by a hash of their path so that a max_files limit samples every package
    # instead of the alphabetically first ones.
    return hashlib.sha256(relpath.encode()).hexdigest()


def list_python_files(roots: list[str]) -> pa.Table:
    """Every ``*.py`` file under the roots, with size and mtime, in a deterministic spread order."""
    rows: list[tuple[str, str, str, int, int]] = []
    for root in roots:
        if not os.path.isdir(root):
            raise CorpusError(f"corpus root {root!r} is not a folder; fix corpus.roots")
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue  # vanished or unreadable: the reader counts it as skipped
                rows.append((_spread_order(rel), root, rel, stat.st_size, stat.st_mtime_ns))
    rows.sort()
    return pa.table(
        {
            "root": [r[1] for r in rows],
            "path": [r[2] for r in rows],
            "size": pa.array([r[3] for r in rows], pa.int64()),
            "mtime_ns": pa.array([r[4] for r in rows], pa.int64()),
        }
    )


def list_data_files(patterns: list[str]) -> pa.Table:
    """The JSONL/Parquet files matching the patterns (paths, URLs or globs), with sizes."""
    if not patterns:
        raise CorpusError("corpus.source is data_files but corpus.data_files is empty")
    urls, sizes = [], []
    for pattern in patterns:
        matches = fsspec.open_files(pattern)
        if not matches:
            raise CorpusError(f"no file matches corpus.data_files entry {pattern!r}")
        for match in matches:
            url = match.full_name
            if not url.endswith((".jsonl", ".json", ".jsonl.gz", ".parquet")):
                raise CorpusError(f"{url!r} is neither JSONL nor Parquet; give .jsonl or .parquet")
            try:
                sizes.append(match.fs.size(match.path))
            except FileNotFoundError as err:
                raise CorpusError(f"corpus.data_files entry {url!r} does not exist") from err
            urls.append(url)
    return pa.table({"url": urls, "size": pa.array(sizes, pa.int64())})


def resolve_hub_revision(name: str) -> str:
    """The current commit of a Hub dataset; fails fast with advice when the Hub is unreachable."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(name, timeout=15).sha
    except Exception as err:
        raise CorpusError(
            f"could not reach the Hugging Face Hub for dataset {name!r} "
            f"({type(err).__name__}: {err}). If this machine is offline, use "
            "corpus.source=python_files (local code) or corpus.data_files (local JSONL/Parquet)."
        ) from err


@dataclass(frozen=True)
class Snapshot:
    """What a corpus source holds now: a file listing, or a Hub dataset at a revision."""

    listing: pa.Table | None = None
    hub_source: dict[str, str] | None = None

    @cached_property
    def listing_bytes(self) -> bytes:
        """The listing as a Parquet file."""
        buffer = io.BytesIO()
        pq.write_table(self.listing, buffer)
        return buffer.getvalue()

    def fingerprint(self) -> str:
        """A hash of the snapshot, so the stage key changes when the corpus does."""
        if self.hub_source is not None:
            blob = json.dumps(self.hub_source, sort_keys=True).encode()
        else:
            blob = self.listing_bytes
        return hashlib.sha256(blob).hexdigest()[:16]

    def write(self, writer: StageWriter) -> dict[str, int | str]:
        """Write the snapshot as the stage's parts and return its counts."""
        if self.hub_source is not None:
            writer.write_json(SOURCE_PART, self.hub_source)
            return {"source": "hub", "revision": self.hub_source["rev"]}
        writer.write_bytes(LISTING_PART, self.listing_bytes)
        return {"files": self.listing.num_rows, "bytes": int(pc.sum(self.listing["size"]).as_py())}


def take_snapshot(config: CorpusConfig) -> Snapshot:
    """Resolve the configured source into a snapshot; an empty source is a clear error."""
    if config.source == "hub":
        revision = resolve_hub_revision(config.hub_dataset)
        return Snapshot(
            hub_source={"dataset": config.hub_dataset, "split": config.hub_split, "rev": revision}
        )
    if config.source == "python_files":
        roots = config.roots or default_roots()
        listing = list_python_files(roots)
        where = f"no *.py file under {roots}; point corpus.roots at a folder of Python code"
    else:
        listing = list_data_files(config.data_files)
        where = f"no data file in {config.data_files}"
    if listing.num_rows == 0:
        raise CorpusError(f"the corpus is empty: {where}")
    return Snapshot(listing=listing)


class ReadStats(Counter):
    """Counts of what the reader saw: ``seen``, ``read``, ``bytes_read`` and ``skipped_*``."""


def decode_source(data: bytes) -> tuple[str | None, str | None]:
    """Decode a file's bytes as UTF-8 text, or say why it is skipped (``binary``, ``non_utf8``)."""
    if b"\0" in data:
        return None, "binary"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "non_utf8"


def _iter_python_files(listing: pa.Table, config: CorpusConfig, stats: ReadStats, skip: int):
    columns = (listing[name].to_pylist() for name in ("root", "path", "size"))
    for root, rel, size in itertools.islice(zip(*columns, strict=True), skip, None):
        stats["seen"] += 1
        if size > config.max_file_bytes:
            stats["skipped_too_large"] += 1
            continue
        try:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
        except OSError:
            stats["skipped_unreadable"] += 1
            continue
        text, reason = decode_source(data)
        if text is None:
            stats[f"skipped_{reason}"] += 1
            continue
        yield Document(id=rel, content=text)


def _record_id(record: dict, fallback: str) -> str:
    # The course's data has repo_name and path: that pair identifies a file across copies.
    if record.get("repo_name") and record.get("path"):
        return f"{record['repo_name']}/{record['path']}"
    return str(record.get("id") or fallback)


def _iter_records(
    records: Iterator[tuple[str, int, dict]], config: CorpusConfig, stats: ReadStats, skip: int
):
    """Documents from (origin, row, record) triples, after the first ``skip`` records."""
    for origin, row, record in itertools.islice(records, skip, None):
        stats["seen"] += 1
        if "content" not in record:
            raise CorpusError(
                f"{origin} has no 'content' column; records need the code in 'content'"
            )
        content = record["content"]
        if not isinstance(content, str):
            stats["skipped_non_text"] += 1
            continue
        if len(content.encode("utf-8", "surrogatepass")) > config.max_file_bytes:
            stats["skipped_too_large"] += 1
            continue
        yield Document(id=_record_id(record, f"{origin}#{row}"), content=content)


def _iter_data_file(url: str) -> Iterator[dict]:
    if url.endswith(".parquet"):
        with fsspec.open(url, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=512):
                yield from batch.to_pylist()
        return
    compression = "gzip" if url.endswith(".gz") else None
    with fsspec.open(url, "rt", encoding="utf-8", compression=compression) as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise CorpusError(f"{url} line {line_number} is not valid JSON: {err}") from err


def _iter_hub(source: dict) -> Iterator[dict]:
    import datasets

    stream = datasets.load_dataset(
        source["dataset"], split=source["split"], streaming=True, revision=source["rev"]
    )
    yield from stream


def iter_documents(ref: StageRef, stats: ReadStats, skip: int = 0) -> Iterator[Document]:
    """Stream the documents of a committed corpus snapshot, applying its read limits.

    Skipped files are counted in ``stats`` (by reason), never raised. ``skip`` passes over the
    first source entries without reading them, to resume after ``stats["seen"]`` entries; the
    caller then hands in the stats it had at that point.
    """
    manifest = read_manifest(ref)
    config = CorpusConfig.model_validate(manifest.params["config"])
    if SOURCE_PART in manifest.parts:
        source = json.loads(read_part(ref, SOURCE_PART, manifest))
        records = (("hub", row, rec) for row, rec in enumerate(_iter_hub(source)))
        docs = _iter_records(records, config, stats, skip)
    else:
        listing = pq.read_table(io.BytesIO(read_part(ref, LISTING_PART, manifest)))
        if "url" in listing.column_names:
            records = (
                (url, row, rec)
                for url in listing["url"].to_pylist()
                for row, rec in enumerate(_iter_data_file(url))
            )
            docs = _iter_records(records, config, stats, skip)
        else:
            docs = _iter_python_files(listing, config, stats, skip)
    if _limit_reached(config, stats):  # a resumed read that had already stopped
        return
    for doc in docs:
        stats["read"] += 1
        stats["bytes_read"] += len(doc.content.encode("utf-8", "surrogatepass"))
        yield doc
        if _limit_reached(config, stats):
            return


def _limit_reached(config: CorpusConfig, stats: ReadStats) -> bool:
    if config.max_files is not None and stats["read"] >= config.max_files:
        return True
    return config.max_bytes is not None and stats["bytes_read"] >= config.max_bytes


# Never cached by Prefect: the snapshot must look at the source each time to see changes.
@stage_task("stream-corpus", None)
def stream_corpus(config: CorpusConfig, store_url: str) -> StageRef:
    """Snapshot the configured corpus source into the store."""
    log = stage_logger()
    snapshot = take_snapshot(config)
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    version = code_version([sys.modules[__name__]])
    spec = StageSpec.of("corpus", params, {}, version)
    ref = run_stage(Store(store_url), spec, snapshot.write, log)
    log.info("corpus: %s", ref.counts)
    return ref
