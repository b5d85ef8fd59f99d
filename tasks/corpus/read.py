"""Reading a committed corpus snapshot: each group's files as documents, in bounded memory.

The filter stage reads its groups through this (the corpus stage only lists them): the
converters it calls (notebooks, package archives) decide what documents exist, so they are part
of the filter's key, not the corpus's.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.stages import StageRef, read_manifest, read_part
from storage.store import DamagedObjectError, Store, open_regular
from tasks.corpus.build import (
    SOURCE_PART,
    CorpusConfig,
    CorpusError,
    Document,
    check_file,
    group_part,
    read_groups,
)
from tasks.corpus.kinds import MEMBER_SUFFIXES, convert, member_kind
from tasks.corpus.package_index import DamagedArchiveError, archive_members, read_archive


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


def _read_local(path: str, real_roots: list[str], config: CorpusConfig) -> tuple[str | None, str]:
    """A listed file's text, or None and why it is skipped."""
    # Checked again at read time: the file may have been swapped since the listing.
    problem, _ = check_file(path, real_roots, config.follow_outside_links)
    if problem is not None:
        return None, problem
    try:
        with open_regular(path) as f:
            data = f.read(config.max_file_bytes + 1)
    except DamagedObjectError:
        return None, "not_regular"
    except OSError:
        return None, "unreadable"
    if len(data) > config.max_file_bytes:
        return None, "too_large"
    text, reason = decode_source(data)
    return text, reason or ""


def _iter_python_files(listing: pa.Table, config: CorpusConfig, stats: ReadStats, skip: int):
    """Each listed file as code, and (with kind docstrings) its docstring examples as a second
    document. An entry is one (file, kind): ``skip`` and ``stats["seen"]`` count entries, so a
    resumed read starts between a file's two documents if that is where it stopped."""
    columns = (listing[name].to_pylist() for name in ("root", "path", "size"))
    real_roots = sorted({os.path.realpath(root) for root in listing["root"].to_pylist()})
    kinds = [kind for kind in ("code", "docstrings") if kind in config.kinds]
    entries = ((row, kind) for row in zip(*columns, strict=True) for kind in kinds)
    for (root, rel, size), kind in itertools.islice(entries, skip, None):
        stats["seen"] += 1
        text, problem = None, "too_large"
        if size <= config.max_file_bytes:
            text, problem = _read_local(os.path.join(root, rel), real_roots, config)
        if text is None:
            if kind == kinds[0]:  # a file that cannot be read is counted once
                stats[f"skipped_{problem}"] += 1
            continue
        if kind != "code" and (text := convert(kind, rel, text, config, set(), stats)) is None:
            continue
        yield Document(id=rel if kind == "code" else f"{rel}#{kind}", content=text, kind=kind)


def _iter_package_files(
    store: Store, listing: pa.Table, config: CorpusConfig, stats: ReadStats, skip: int
):
    """The members of each archive that ``member_kind`` reads, converted to Python."""

    def members():
        for row in listing.to_pylist():
            data = read_archive(store, row["sha256"])
            found = archive_members(data, MEMBER_SUFFIXES, config.max_file_bytes)
            try:
                for path, content in found:
                    inner = path.split("/", 1)[-1]  # below the sdist's one top-level folder
                    kind = member_kind(inner, config)
                    if kind is not None:
                        yield f"{row['package']}-{row['version']}/{inner}", kind, content
            except DamagedArchiveError:
                # What came before the damage was read; the rest of the archive cannot be.
                yield f"{row['package']}-{row['version']}", "damaged", None

    seen_blocks: set[bytes] = set()  # across one archive's modules (a group is one archive)
    for doc_id, kind, content in itertools.islice(members(), skip, None):
        stats["seen"] += 1
        if kind == "damaged":
            stats["skipped_damaged_archive"] += 1
            continue
        if content is None:
            stats["skipped_too_large"] += 1
            continue
        text, reason = decode_source(content)
        if text is None:
            stats[f"skipped_{reason}"] += 1
            continue
        text = convert(kind, doc_id, text, config, seen_blocks, stats)
        if text is not None:
            yield Document(id=doc_id, content=text, kind=kind)


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


def snapshot_config(store: Store, ref: StageRef, manifest=None) -> CorpusConfig:
    """The settings a committed corpus snapshot was taken with (they decide how it is read)."""
    manifest = manifest or read_manifest(store, ref)
    try:
        return CorpusConfig.model_validate(manifest.params["config"])
    except (KeyError, ValueError) as err:
        raise DamagedObjectError(
            f"{store.uri(ref.prefix)} holds no valid corpus settings ({err}); delete it and rerun"
        ) from None


def iter_documents(
    store: Store, ref: StageRef, stats: ReadStats, skip: int = 0, group: str | None = None
) -> Iterator[Document]:
    """Stream the documents of one group of a committed corpus snapshot (or, with no group,
    of all its groups in order), applying its read limits.

    Skipped files are counted in ``stats`` (by reason), never raised. ``skip`` passes over the
    first source entries without reading them, to resume after ``stats["seen"]`` entries; the
    caller then hands in the stats it had at that point.
    """
    manifest = read_manifest(store, ref)
    config = snapshot_config(store, ref, manifest)
    if SOURCE_PART in manifest.parts:
        source = json.loads(read_part(store, ref, SOURCE_PART, manifest))
        records = (("hub", row, rec) for row, rec in enumerate(_iter_hub(source)))
        docs = _iter_records(records, config, stats, skip)
    else:
        names = [group] if group else [str(g["name"]) for g in read_groups(store, ref)]
        listing = pa.concat_tables(
            pq.read_table(io.BytesIO(read_part(store, ref, group_part(name), manifest)))
            for name in names
        )
        if "sha256" in listing.column_names:
            docs = _iter_package_files(store, listing, config, stats, skip)
        elif "url" in listing.column_names:
            records = (
                (url, row, rec)
                for url in listing["url"].to_pylist()
                for row, rec in enumerate(_iter_data_file(url))
            )
            docs = _iter_records(records, config, stats, skip)
        else:
            # The limits chose the listed files already (``take_snapshot``).
            config = config.model_copy(update={"max_files": None, "max_bytes": None})
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
