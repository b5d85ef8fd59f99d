"""Stage corpus: resolve and stream the source corpus in bounded memory.

Three sources: Python files under local roots (by default the running interpreter's
site-packages, so a fresh machine has real code without a download), JSONL/Parquet files with a
``content`` column (local paths or fsspec URLs, globs allowed), or a Hugging Face dataset streamed
with ``datasets``.

The stage commits a *snapshot* of the source (the file listing with sizes and mtimes, or the
dataset's revision) rather than a copy of the raw code: its key changes when the corpus changes,
and the filter stage streams the documents from it without holding them in memory. The listing
is committed cut into groups (``tasks.corpus.groups``), each with a fingerprint of its rows:
the filter and tokenize stages run once per group, keyed on that fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import site
import stat
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from storage.errors import UserError
from storage.stages import StageRef, StageSpec, StageWriter, read_part
from storage.store import DamagedObjectError, Store
from tasks.corpus import CORPUS
from tasks.corpus.groups import (
    cut_by_path,
    limit_listing,
    one_per_row,
    path_hash,
    table_fingerprint,
)
from tasks.corpus.package_index import (
    ARCHIVES_DIR,
    PackageIndexError,
    configured_index_url,
    fetch_archive,
    newest_sdist,
)
from tasks.params import StageParams

DEFAULT_HUB_DATASET = "huggingface-course/codeparrot-ds-train"
SOURCE_PART = "source.json"
GROUPS_PART = "groups.json"
HUB_GROUP = "hub"


# The kinds of document a source can be read as (``CorpusConfig.kinds``).
DocumentKind = Literal["code", "notebooks", "docstrings", "docs", "tests"]


class CorpusError(UserError, ValueError):
    """The corpus could not be read or holds nothing usable."""


class CorpusConfig(StageParams):
    """Where the raw code comes from and how much of it to read."""

    source: Literal["python_files", "data_files", "hub", "packages"] = "python_files"
    """Which kind of source to read."""
    packages: list[str] = []
    """When source is packages: the packages whose newest source distributions are read
    (their .py and .ipynb files: examples, galleries, tutorials, notebooks)."""
    index_url: str | None = None
    """The package index (PEP 503/691); empty means the one pip is configured with."""
    member_patterns: list[str] = []
    """When source is packages: read only archive members whose path (below the top folder)
    matches one of these globs, for example "examples/*"; empty reads every member."""
    kinds: list[DocumentKind] = Field(default=["code", "notebooks"], min_length=1)
    """Which kinds of document are read. code: .py files (packages: the members that match
    member_patterns); notebooks: .ipynb members as Python; docstrings: the >>> examples of
    library modules (and, for python_files, of each file beside its code); docs: the Python
    blocks of doc/ and docs/ pages (.rst, .md, .txt); tests: test functions as usage code."""
    tests_keep_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """When kinds holds tests: the share of test functions kept, chosen by a hash of each
    function's identity, so that tests cannot swamp the corpus."""
    roots: list[str] = []
    """Folders searched for Python files (.py); empty means the interpreter's site-packages."""
    data_files: list[str] = []
    """JSONL or Parquet files (paths, fsspec URLs or globs) with a content column."""
    hub_dataset: str = DEFAULT_HUB_DATASET
    """Hugging Face dataset streamed when source is hub."""
    hub_split: str = "train"
    """Split of the Hub dataset."""
    max_files: int | None = Field(default=None, ge=1)
    """Read at most this many files (for quick runs); None reads all. Local Python files: the
    first ones in a hash order of their paths. Data files, archives and the Hub: per group."""
    max_bytes: int | None = Field(default=None, ge=1)
    """Read at most this many bytes of code, counted as max_files is; None reads all."""
    group_files: int = Field(default=1_000, ge=1)
    """Local Python files per group on average: a group is filtered and tokenized as one task
    and rebuilt only when one of its files changes. Data files and archives are a group each."""
    group_max_bytes: int = Field(default=32 << 20, ge=1 << 10)
    """A group of local Python files ends once it holds this many bytes: the bound on one
    task's input, and so on a worker's memory."""
    max_file_bytes: int = Field(default=1_000_000, ge=1)
    """Skip files larger than this: generated code and embedded data teach nothing."""
    follow_outside_links: bool = False
    """Read files that are symbolic links to places outside every root (skipped when off)."""

    @model_validator(mode="after")
    def _kinds_fit_the_source(self) -> CorpusConfig:
        readable = SOURCE_KINDS.get(self.source)
        if readable is not None and not set(self.kinds) <= readable:
            unread = sorted(set(self.kinds) - readable)
            raise ValueError(
                f"corpus.kinds {unread} cannot be read from a {self.source} source; it reads "
                f"{sorted(readable)} (packages read every kind)"
            )
        return self


# The kinds each source can read (a packages source reads all); records are code as they are.
# Notebooks are allowed everywhere, since the default names them, and met only in archives.
SOURCE_KINDS = {
    "python_files": {"code", "notebooks", "docstrings"},
    "data_files": {"code", "notebooks"},
    "hub": {"code", "notebooks"},
}


# What decides how a listed group is read, beside the group's own rows: a group's filter output
# is keyed on these and not on the whole config, so adding a root (which changes ``roots``)
# does not rebuild the groups of the roots that were there before.
READ_SETTINGS = (
    "source",
    "max_file_bytes",
    "follow_outside_links",
    "member_patterns",
    "kinds",
    "tests_keep_fraction",
)


def read_settings(config: CorpusConfig) -> dict:
    """The settings that decide what a group of the corpus yields, given its rows."""
    settings = config.model_dump(mode="json", include=set(READ_SETTINGS))
    if config.source != "python_files":  # there, the limits chose the rows already
        settings.update(max_files=config.max_files, max_bytes=config.max_bytes)
    return settings


@dataclass(frozen=True)
class Document:
    """One source file: a stable identity (used for the split), its text, and the kind of
    document it was read as (one of ``DocumentKind``)."""

    id: str
    content: str
    kind: str = "code"


def default_roots() -> list[str]:
    """The site-packages folders of the running interpreter."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(p for p in site.getsitepackages() if os.path.isdir(p))
    return sorted(roots)


def _inside(path: str, real_roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in real_roots)


def check_file(
    path: str, real_roots: list[str], follow_outside_links: bool
) -> tuple[str | None, os.stat_result | None]:
    """Why a listed path is not read (``bad_name``, ``outside_link``, ``not_regular``,
    ``unreadable``) and None; or None and the stat of a regular file the corpus may read."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "bad_name", None  # not valid UTF-8: cannot be stored, ordered or reported
    try:
        found = os.lstat(path)  # one system call for a plain file: listings are large
        if stat.S_ISLNK(found.st_mode):
            if not follow_outside_links and not _inside(path, real_roots):
                return "outside_link", None
            found = os.stat(path)
    except OSError:
        return "unreadable", None
    if not stat.S_ISREG(found.st_mode):
        return "not_regular", None  # a FIFO, device or socket would block or never end
    return None, found


def list_python_files(
    roots: list[str], follow_outside_links: bool = False
) -> tuple[pa.Table, Counter]:
    """Every readable ``*.py`` file under the roots, with size and mtime, in a deterministic
    spread order; and the count of files left out, by reason (``skipped_*``)."""
    rows: list[tuple[str, str, str, int, int]] = []
    skipped: Counter = Counter()
    real_roots = [os.path.realpath(root) for root in roots]
    for root in roots:
        if not os.path.isdir(root):
            raise CorpusError(f"corpus root {root!r} is not a folder; fix corpus.roots")
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            # os.walk joins names onto ``root`` as given: cutting it off is os.path.relpath,
            # without its cost per file.
            under = folder[len(root) :].lstrip(os.sep)
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                problem, found = check_file(path, real_roots, follow_outside_links)
                if problem:
                    skipped[f"skipped_{problem}"] += 1
                    continue
                rel = os.path.join(under, name) if under else name
                # Spread order: a max_files limit then samples every package, not the first ones.
                rows.append((path_hash(rel), root, rel, found.st_size, found.st_mtime_ns))
    rows.sort()
    table = pa.table(
        {
            "root": [r[1] for r in rows],
            "path": [r[2] for r in rows],
            "size": pa.array([r[3] for r in rows], pa.int64()),
            "mtime_ns": pa.array([r[4] for r in rows], pa.int64()),
        }
    )
    return table, skipped


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
            if "file" in match.fs.protocol and check_file(match.path, [], True)[0]:
                raise CorpusError(
                    f"corpus.data_files entry {url!r} is not a regular, readable file"
                )
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


def _group_label(group: pa.Table, name: str) -> str:
    """What a report calls a group: a package archive's package-version, else its name."""
    if "package" in group.column_names and group.num_rows == 1:
        return f"{group['package'][0].as_py()}-{group['version'][0].as_py()}"
    return name


@dataclass(frozen=True)
class Snapshot:
    """What a corpus source holds now: a file listing cut into groups, or a Hub dataset at a
    revision (one group: a stream has no files to cut)."""

    groups: list[pa.Table] = field(default_factory=list)
    hub_source: dict[str, str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    """Files left out of the listing, by reason (``skipped_*``)."""

    @cached_property
    def group_index(self) -> list[dict[str, int | str]]:
        """Each group's name, fingerprint, files and bytes, in order."""
        if self.hub_source is not None:
            blob = json.dumps(self.hub_source, sort_keys=True).encode()
            return [{"name": HUB_GROUP, "fingerprint": hashlib.sha256(blob).hexdigest()[:20]}]
        return [
            {
                "name": f"{index:05d}",
                "label": _group_label(group, f"{index:05d}"),
                "fingerprint": table_fingerprint(group),
                "files": group.num_rows,
                "bytes": int(pc.sum(group["size"]).as_py() or 0),
            }
            for index, group in enumerate(self.groups)
        ]

    def fingerprint(self) -> str:
        """A hash of the snapshot, so the stage key changes when the corpus does."""
        blob = json.dumps([g["fingerprint"] for g in self.group_index]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def write(self, writer: StageWriter) -> dict[str, int | str]:
        """Write the snapshot as the stage's parts and return its counts."""
        writer.write_json(GROUPS_PART, self.group_index)
        if self.hub_source is not None:
            writer.write_json(SOURCE_PART, self.hub_source)
            return {"source": "hub", "revision": self.hub_source["rev"], "groups": 1}
        for entry, group in zip(self.group_index, self.groups, strict=True):
            buffer = io.BytesIO()
            pq.write_table(group, buffer)
            writer.write_bytes(group_part(str(entry["name"])), buffer.getvalue())
        return {
            "files": sum(g.num_rows for g in self.groups),
            "bytes": sum(int(g["bytes"]) for g in self.group_index),
            "groups": len(self.groups),
            **self.skipped,
        }


def group_part(name: str) -> str:
    """The part that holds one group's listing."""
    return f"groups/{name}.parquet"


def read_groups(store: Store, ref: StageRef) -> list[dict[str, int | str]]:
    """The groups of a committed corpus snapshot: name, fingerprint, files, bytes; checked."""
    entries = json.loads(read_part(store, ref, GROUPS_PART))
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    if not all(isinstance(n, str) and re.fullmatch(r"[0-9]{5}|hub", n) for n in names):
        raise DamagedObjectError(f"{store.uri(ref.prefix)}/{GROUPS_PART} is not a group index")
    return entries


def list_package_archives(config: CorpusConfig, store: Store) -> pa.Table:
    """The newest source distribution of each package, downloaded into the store once."""
    if not config.packages:
        raise CorpusError("corpus.source is packages but corpus.packages is empty")
    index_url = config.index_url or configured_index_url()
    present = {
        name: size
        for name, size in store.list_sizes(ARCHIVES_DIR).items()
        if re.fullmatch(r"[0-9a-f]{64}", name)
    }
    rows = []
    try:
        for package in config.packages:
            dist = newest_sdist(index_url, package)
            sha256, size = fetch_archive(store, dist, present)
            rows.append((dist.package, dist.version, dist.filename, sha256, size))
    except PackageIndexError as err:
        raise CorpusError(str(err)) from None
    return pa.table(
        {
            "package": [r[0] for r in rows],
            "version": [r[1] for r in rows],
            "filename": [r[2] for r in rows],
            "sha256": [r[3] for r in rows],
            "size": pa.array([r[4] for r in rows], pa.int64()),
        }
    )


def take_snapshot(config: CorpusConfig, store: Store | None = None) -> Snapshot:
    """Resolve the configured source into a snapshot; an empty source is a clear error.

    A ``packages`` source needs the store: its archives are kept there, by sha256.
    """
    if config.source == "packages":
        if store is None:
            raise ValueError("a packages corpus needs the store to keep its archives in")
        return Snapshot(groups=one_per_row(list_package_archives(config, store)))
    if config.source == "hub":
        revision = resolve_hub_revision(config.hub_dataset)
        return Snapshot(
            hub_source={"dataset": config.hub_dataset, "split": config.hub_split, "rev": revision}
        )
    skipped: dict[str, int] = {}
    if config.source == "python_files":
        roots = config.roots or default_roots()
        listing, skipped = list_python_files(roots, config.follow_outside_links)
        where = f"no *.py file under {roots}; point corpus.roots at a folder of Python code"
        if skipped:
            where = f"{where} (left out: {dict(skipped)})"
    else:
        listing = list_data_files(config.data_files)
        where = f"no data file in {config.data_files}"
    if listing.num_rows == 0:
        raise CorpusError(f"the corpus is empty: {where}")
    if config.source == "data_files":
        return Snapshot(groups=one_per_row(listing))
    listing = limit_listing(listing, config.max_files, config.max_bytes)
    groups = cut_by_path(listing, config.group_files, config.group_max_bytes)
    return Snapshot(groups=groups, skipped=dict(skipped))


def corpus_spec(config: CorpusConfig, snapshot: Snapshot) -> StageSpec:
    """Where a snapshot of the configured source lives (its key is the snapshot's, so the
    source is looked at on every run)."""
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    return CORPUS.spec(params, {})
