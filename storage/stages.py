"""Content-addressed stage outputs: ``{store}/{stage}/{key}/``, parts first, manifest last.

A stage's key hashes its parameters, the keys of its inputs and a version of its code, so the
same inputs always land at the same place. Only a committed manifest makes an output visible:
parts without a manifest are leftovers of an interrupted run and are never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from storage.lock import StageLock
from storage.store import Store, StoreError, cache_root

MANIFEST_NAME = "_manifest.json"
# Progress records of a stage that resumes part-wise; each commits the parts written before it.
PROGRESS_DIR = "_progress"
# Training checkpoints: the train stage keeps and validates these itself.
CHECKPOINTS_DIR = "_checkpoints"
LOCK_NAME = "_lock.json"
# Prefect's cached task result for this output, written after the manifest.
RESULT_RECORD = "_prefect_result"
KEY_LENGTH = 20

Log = logging.Logger | logging.LoggerAdapter


class StageRef(BaseModel):
    """What passes between tasks: where a committed stage output lives and a few counts."""

    stage: str
    key: str
    store_url: str
    counts: dict[str, Any] = {}

    @property
    def prefix(self) -> str:
        """The output's folder, relative to the store root."""
        return f"{self.stage}/{self.key}"

    @property
    def uri(self) -> str:
        """The output's folder as a full URL."""
        return f"{self.store_url}/{self.prefix}"

    def store(self) -> Store:
        """The store that holds this output."""
        return Store(self.store_url)


class PartInfo(BaseModel):
    """Size and checksum of one object in a stage output."""

    size: int
    sha256: str


class Manifest(BaseModel):
    """The record that commits a stage output: what it was built from and what it holds."""

    stage: str
    key: str
    code_version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    parts: dict[str, PartInfo]
    counts: dict[str, Any]
    created_at: str


def code_version(modules: Iterable[ModuleType], *extra: str) -> str:
    """A short hash of the source of the modules a stage runs, plus extra version strings.

    Prefect's TASK_SOURCE would hash only the task function itself, not the helpers it calls.
    """
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


class CorruptPartError(StoreError):
    """A committed part's bytes differ from what its manifest recorded."""


def stage_key(stage: str, params: dict[str, Any], inputs: dict[str, str], version: str) -> str:
    """The content key of a stage output."""
    blob = json.dumps(
        {"stage": stage, "params": params, "inputs": inputs, "code": version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class StageSpec:
    """Everything that decides where a stage's output lives: its name, parameters, inputs, code."""

    stage: str
    params: dict[str, Any]
    inputs: dict[str, StageRef] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def of(
        cls,
        stage: str,
        params: BaseModel | dict[str, Any],
        inputs: dict[str, StageRef],
        version: str,
    ) -> StageSpec:
        """A spec from a parameter model or dict."""
        if isinstance(params, BaseModel):
            params = params.model_dump(mode="json")
        return cls(stage=stage, params=params, inputs=inputs, version=version)

    @cached_property
    def input_keys(self) -> dict[str, str]:
        """Each input as ``stage/key``: what the output depends on, whatever store holds it."""
        return {name: ref.prefix for name, ref in self.inputs.items()}

    @cached_property
    def key(self) -> str:
        """The content key of the output."""
        return stage_key(self.stage, self.params, self.input_keys, self.version)

    @property
    def prefix(self) -> str:
        """The output's folder, relative to the store root."""
        return f"{self.stage}/{self.key}"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress_name(index: int) -> str:
    return f"{PROGRESS_DIR}/{index:06d}.json"


class StageWriter:
    """Writes the parts of one stage output; progress records let an interrupted build resume."""

    def __init__(self, store: Store, stage: str, key: str) -> None:
        self.store = store
        self.stage = stage
        self.key = key
        self.prefix = f"{stage}/{key}"
        self.parts: dict[str, PartInfo] = {}
        # The states of the progress records an interrupted earlier attempt committed, in order.
        self.resumed_states: list[dict[str, Any]] = []
        self._recorded: set[str] = set()
        self._records = 0

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one part from memory."""
        self.store.write_bytes(f"{self.prefix}/{name}", data)
        self.parts[name] = PartInfo(size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def write_json(self, name: str, obj: Any) -> None:
        """Write one JSON part."""
        self.write_bytes(name, json.dumps(obj, indent=2, sort_keys=True).encode())

    def put_file(self, local_path: str | Path, name: str) -> None:
        """Upload one local file as a part."""
        local_path = Path(local_path)
        self.store.put_file(local_path, f"{self.prefix}/{name}")
        self.parts[name] = PartInfo(size=local_path.stat().st_size, sha256=sha256_file(local_path))

    def put_dir(self, local_dir: str | Path, name: str) -> None:
        """Upload every file below a local folder as parts under ``name/``."""
        local_dir = Path(local_dir)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            self.put_file(path, f"{name}/{rel}" if name else rel)

    def record_progress(self, state: dict[str, Any]) -> None:
        """Commit the parts written so far together with the state a resumed build starts from.

        Call it only where every part written is complete and ``state`` describes exactly them.
        """
        new = {n: info for n, info in self.parts.items() if n not in self._recorded}
        record = {"parts": {n: i.model_dump() for n, i in new.items()}, "state": state}
        self.store.write_json(f"{self.prefix}/{_progress_name(self._records)}", record)
        self._recorded.update(new)
        self._records += 1

    def recover(self, log: Log) -> None:
        """Keep what earlier attempts committed through progress records; delete the rest.

        A record is trusted only if every part it lists is there with its recorded size; the
        first record that fails this ends the trusted sequence. Training checkpoints are left
        to the train stage, which validates them itself.
        """
        present = self.store.list_sizes(self.prefix)  # one listing, not a request per part
        while (name := _progress_name(self._records)) in present:
            record = self.store.read_json(f"{self.prefix}/{name}")
            parts = {n: PartInfo.model_validate(i) for n, i in record["parts"].items()}
            if any(present.get(n) != p.size for n, p in parts.items()):
                log.warning("%s: progress record %s lists a missing part; not trusted", self, name)
                break
            self.parts.update(parts)
            self._recorded.update(parts)
            self.resumed_states.append(record["state"])
            self._records += 1
        keep = set(self.parts) | {_progress_name(i) for i in range(self._records)} | {LOCK_NAME}
        for rel in present:
            if rel not in keep and not rel.startswith(f"{CHECKPOINTS_DIR}/"):
                self.store.remove(f"{self.prefix}/{rel}")
        if self._records:
            log.info(
                "%s: resuming after %d committed progress record(s), %d part(s) kept",
                self.stage,
                self._records,
                len(self.parts),
            )

    def __str__(self) -> str:
        return self.store.uri(self.prefix)


def load_manifest(store: Store, stage: str, key: str) -> Manifest | None:
    """The committed manifest of a stage output, or None if it was never committed."""
    rel = f"{stage}/{key}/{MANIFEST_NAME}"
    try:
        data = store.read_json(rel)
    except FileNotFoundError:
        return None
    try:
        return Manifest.model_validate(data)
    except ValueError as err:
        raise StoreError(
            f"{store.uri(rel)} is not a valid manifest ({err}); delete that folder to recompute it"
        ) from err


def run_stage(
    store: Store,
    spec: StageSpec,
    build: Callable[[StageWriter], dict[str, Any]],
    log: Log,
) -> StageRef:
    """Return the committed output for this spec, building and committing it if needed.

    ``build`` writes the parts through the writer it is given and returns the output's counts.
    An output is visible only once its manifest is written, after every part. Runs that build
    the same output at once take turns through a lock in the output's folder: the second finds
    the first's manifest when the lock is free.
    """
    manifest = load_manifest(store, spec.stage, spec.key)
    if manifest is None:
        lock = StageLock(store, f"{spec.prefix}/{LOCK_NAME}", log)
        committed = lambda: load_manifest(store, spec.stage, spec.key)  # noqa: E731
        with lock.hold(until=lambda: committed() is not None):
            manifest = committed() or _build(store, spec, build, log)
    else:
        log.info("%s: found committed output %s; nothing to do", spec.stage, spec.prefix)
    return committed_ref(store, spec, manifest)


def committed_ref(store: Store, spec: StageSpec, manifest: Manifest) -> StageRef:
    """The reference to the output of ``spec`` that ``manifest`` commits."""
    return StageRef(
        stage=spec.stage, key=spec.key, store_url=store.url, counts=dict(manifest.counts)
    )


def _build(store: Store, spec: StageSpec, build: Callable, log: Log) -> Manifest:
    writer = StageWriter(store, spec.stage, spec.key)
    writer.recover(log)
    log.info("%s: building %s", spec.stage, store.uri(writer.prefix))
    counts = build(writer)
    manifest = Manifest(
        stage=spec.stage,
        key=spec.key,
        code_version=spec.version,
        params=spec.params,
        inputs=spec.input_keys,
        parts=writer.parts,
        counts=counts,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    store.write_json(f"{writer.prefix}/{MANIFEST_NAME}", manifest.model_dump(mode="json"))
    log.info("%s: committed %s", spec.stage, store.uri(writer.prefix))
    store.remove(f"{writer.prefix}/{PROGRESS_DIR}")
    return manifest


def read_manifest(ref: StageRef) -> Manifest:
    """The manifest of a committed output that a reference points at."""
    manifest = load_manifest(ref.store(), ref.stage, ref.key)
    if manifest is None:
        raise StoreError(f"{ref.uri} has no committed manifest; rerun the pipeline to rebuild it")
    return manifest


def part_names(ref: StageRef, folder: str, manifest: Manifest | None = None) -> list[str]:
    """The committed parts below a folder of an output, sorted."""
    manifest = manifest or read_manifest(ref)
    return sorted(n for n in manifest.parts if n.startswith(f"{folder}/"))


def _expected(ref: StageRef, name: str, manifest: Manifest | None) -> PartInfo:
    manifest = manifest or read_manifest(ref)
    if name not in manifest.parts:
        raise StoreError(f"{ref.uri} has no part {name!r}")
    return manifest.parts[name]


def _corrupt(ref: StageRef, name: str, expected: PartInfo, size: int, digest: str):
    return CorruptPartError(
        f"{ref.uri}/{name} is corrupt: {size} bytes with sha256 {digest[:16]}..., but its "
        f"manifest committed {expected.size} bytes with sha256 {expected.sha256[:16]}.... "
        f"It changed after it was written; delete {ref.uri} and rerun to recompute that stage"
    )


def read_part(ref: StageRef, name: str, manifest: Manifest | None = None) -> bytes:
    """A committed part's bytes, checked against its manifest."""
    expected = _expected(ref, name, manifest)
    data = ref.store().read_bytes(f"{ref.prefix}/{name}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise _corrupt(ref, name, expected, len(data), digest)
    return data


def part_file(ref: StageRef, name: str, manifest: Manifest | None = None) -> Path:
    """A local file holding a committed part, checked against its manifest.

    On a local store that is the stored file itself; a remote part is downloaded into a cache
    named by its sha256, so a cached copy is complete and right by construction.
    """
    expected = _expected(ref, name, manifest)
    store = ref.store()
    local = store.local_file(f"{ref.prefix}/{name}")
    if local is not None:
        if not local.is_file():
            raise StoreError(f"{ref.uri}/{name} is missing; delete {ref.uri} and rerun")
        digest = sha256_file(local)
        if digest != expected.sha256:
            raise _corrupt(ref, name, expected, local.stat().st_size, digest)
        return local
    blob = cache_root() / "blobs" / expected.sha256[:2] / expected.sha256
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=blob.parent, prefix=".tmp-")
        os.close(fd)
        try:
            store.get_file(f"{ref.prefix}/{name}", tmp)
            digest = sha256_file(tmp)
            if digest != expected.sha256:
                raise _corrupt(ref, name, expected, os.path.getsize(tmp), digest)
            os.replace(tmp, blob)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return blob


def part_folder(ref: StageRef, folder: str) -> Path:
    """A local folder holding every committed part below ``folder``, each one checked.

    ``folder`` may be ``""`` for the whole output.
    """
    manifest = read_manifest(ref)
    names = sorted(n for n in manifest.parts if not folder or n.startswith(f"{folder}/"))
    if not names:
        raise StoreError(f"{ref.uri} has no parts under {folder!r}")
    files = {n[len(folder) + 1 :] if folder else n: part_file(ref, n, manifest) for n in names}
    store = ref.store()
    if store.is_local:
        return Path(store.local_file(f"{ref.prefix}/{folder}" if folder else ref.prefix))
    digest = hashlib.sha256(f"{ref.uri}/{folder}".encode()).hexdigest()[:24]
    target = cache_root() / "folders" / digest
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        for rel, blob in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, staging / rel)
            except OSError:
                shutil.copyfile(blob, staging / rel)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same folder first
            shutil.rmtree(staging, ignore_errors=True)
    return target
