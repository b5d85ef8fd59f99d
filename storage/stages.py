"""Content-addressed stage outputs: ``{store}/{stage}/{key}/``, parts first, manifest last.

A stage's key hashes its parameters, the keys of its inputs and a version of its code, so the
same inputs always land at the same place. Only a committed manifest makes an output visible:
parts without a manifest are leftovers of an interrupted run and are never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from storage.lock import StageLock
from storage.store import (
    DamagedObjectError,
    Store,
    StoreError,
    cache_root,
    make_private_dir,
    open_regular,
)

MANIFEST_NAME = "_manifest.json"
# Progress records of a stage that resumes part-wise; each commits the parts written before it.
PROGRESS_DIR = "_progress"
# Training checkpoints: the train stage keeps and validates these itself.
CHECKPOINTS_DIR = "_checkpoints"
LOCK_NAME = "_lock.json"
# Real manifests are a few kB; one far larger was planted or damaged, and parsing it would cost
# memory and time without bound.
MAX_MANIFEST_BYTES = 8 << 20
KEY_LENGTH = 20
# A stage is a folder name, or two (``publish/codeparrot-ds``); a key is a hex content hash.
STAGE_PATTERN = r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?$"
KEY_PATTERN = rf"^[0-9a-f]{{{KEY_LENGTH}}}$"

Log = logging.Logger | logging.LoggerAdapter


class StageRef(BaseModel):
    """What passes between tasks: which committed output, relative to the store, and counts.

    It names no store, so a store that is copied, moved or synced elsewhere still works: the
    reader pairs the reference with the store it was given.
    """

    stage: str = Field(pattern=STAGE_PATTERN)
    key: str = Field(pattern=KEY_PATTERN)
    counts: dict[str, Any] = {}
    reused: bool = False
    """The output was found committed, not built by the run that holds this reference."""
    built_by: str = ""
    """Who built the output (a flow run's name and id), as its manifest records."""
    built_at: str = ""
    """When the output was committed (UTC, ISO 8601)."""
    resumed_progress_records: int = 0
    """How many progress records of interrupted attempts its build resumed from (0: none)."""

    @property
    def prefix(self) -> str:
        """The output's folder, relative to the store root."""
        return f"{self.stage}/{self.key}"


def check_part_name(name: str) -> str:
    """A part name is a relative path that stays inside its output folder."""
    pieces = name.split("/")
    if (
        not name
        or "\\" in name
        or "\0" in name
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in pieces)
    ):
        raise ValueError(f"part name {name!r} is not a relative path inside the output")
    return name


class PartInfo(BaseModel):
    """Size and checksum of one object in a stage output."""

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """The record that commits a stage output: what it was built from and what it holds."""

    stage: str = Field(pattern=STAGE_PATTERN)
    key: str = Field(pattern=KEY_PATTERN)
    code_version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    parts: dict[str, PartInfo]
    counts: dict[str, Any]
    created_at: str
    built_by: str = ""
    resumed_progress_records: int = Field(default=0, ge=0)
    """How the output was made, not what it holds: the interrupted attempts' records kept."""

    @field_validator("parts")
    @classmethod
    def _parts_stay_inside(cls, parts: dict[str, PartInfo]) -> dict[str, PartInfo]:
        for name in parts:
            check_part_name(name)
        return parts


class CorruptPartError(StoreError):
    """A committed part's bytes differ from what its manifest recorded."""


class DamagedManifestError(StoreError):
    """A manifest that is not valid JSON or not a valid manifest: the output is not trusted."""


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
    with open_regular(path) as f:
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
            try:
                record = self.store.read_json(f"{self.prefix}/{name}")
                parts = {
                    check_part_name(n): PartInfo.model_validate(i)
                    for n, i in record["parts"].items()
                }
                state = record["state"]
            except (DamagedObjectError, ValueError, KeyError, TypeError, AttributeError) as err:
                log.warning("%s: progress record %s is damaged (%s); not trusted", self, name, err)
                break
            if any(present.get(n) != p.size for n, p in parts.items()):
                log.warning("%s: progress record %s lists a missing part; not trusted", self, name)
                break
            self.parts.update(parts)
            self._recorded.update(parts)
            self.resumed_states.append(state)
            self._records += 1
        keep = set(self.parts) | {_progress_name(i) for i in range(self._records)}
        for rel in present:
            # The lock and its holders' heartbeats (``_lock.json.beat-<owner>``) are the lock's.
            if rel not in keep and not rel.startswith((f"{CHECKPOINTS_DIR}/", LOCK_NAME)):
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


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"[:300]
    return str(err).splitlines()[0][:300]


def load_manifest(store: Store, stage: str, key: str) -> Manifest | None:
    """The committed manifest of a stage output, or None if it was never committed.

    A manifest that cannot be read as one is a ``DamagedManifestError`` naming it.
    """
    rel = f"{stage}/{key}/{MANIFEST_NAME}"
    try:
        manifest = Manifest.model_validate(store.read_json(rel, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        return None
    except (DamagedObjectError, ValueError) as err:
        raise DamagedManifestError(
            f"{store.uri(rel)} is damaged ({_first_problem(err)}); run `codeparrot-ds "
            f"verify --repair --store {store.url}`, or delete {store.uri(f'{stage}/{key}')}, "
            "and rerun to recompute it"
        ) from None
    if (manifest.stage, manifest.key) != (stage, key):
        raise DamagedManifestError(
            f"{store.uri(rel)} commits {manifest.stage}/{manifest.key}, not {stage}/{key}: "
            "it was copied from another output; delete that folder and rerun"
        )
    return manifest


def damaged_parts(store: Store, prefix: str, manifest: Manifest) -> list[str]:
    """The parts of a committed output that are missing or of the wrong size (one listing)."""
    present = store.list_sizes(prefix)
    return sorted(n for n, info in manifest.parts.items() if present.get(n) != info.size)


def _found_manifest(store: Store, spec: StageSpec, log: Log) -> Manifest | None:
    """The committed manifest of ``spec``; a damaged output is uncommitted so it is rebuilt.

    Rebuilding is safe: the key fixes what the output holds, and nothing downstream can use
    parts that no longer match their manifest.
    """
    try:
        manifest = load_manifest(store, spec.stage, spec.key)
    except DamagedManifestError as err:
        manifest, problem = None, str(err).split("; ")[0]
    else:
        damage = damaged_parts(store, spec.prefix, manifest) if manifest else []
        if not damage:
            return manifest
        problem = f"parts missing or resized: {', '.join(damage[:5])}"
    log.warning("%s: %s; rebuilding %s", spec.stage, problem, store.uri(spec.prefix))
    store.remove(f"{spec.prefix}/{MANIFEST_NAME}")
    return None


def find_committed(store: Store, spec: StageSpec, log: Log) -> StageRef | None:
    """The committed output of ``spec`` (marked reused), or None if it must be built; a
    damaged output is uncommitted, as ``run_stage`` does, so that it is built again."""
    manifest = _found_manifest(store, spec, log)
    return committed_ref(manifest, reused=True) if manifest else None


def run_stage(
    store: Store,
    spec: StageSpec,
    build: Callable[[StageWriter], dict[str, Any]],
    log: Log,
    built_by: str = "",
) -> StageRef:
    """Return the committed output for this spec, building and committing it if needed.

    ``build`` writes the parts through the writer it is given and returns the output's counts.
    An output is visible only once its manifest is written, after every part. Runs that build
    the same output at once take turns through a lock in the output's folder: the second finds
    the first's manifest when the lock is free.
    """
    manifest = _found_manifest(store, spec, log)
    if manifest is None:
        lock = StageLock(store, f"{spec.prefix}/{LOCK_NAME}", log)
        committed = lambda: load_manifest(store, spec.stage, spec.key)  # noqa: E731
        with lock.hold(until=lambda: committed() is not None):
            manifest = committed()  # another run may have built it while this one waited
            if manifest is None:
                return committed_ref(_build(store, spec, build, log, built_by, lock.check_held))
    else:
        log.info("%s: found committed output %s; nothing to do", spec.stage, spec.prefix)
    return committed_ref(manifest, reused=True)


def committed_ref(manifest: Manifest, reused: bool = False) -> StageRef:
    """The reference to the output that ``manifest`` commits; ``reused`` when the caller found
    it committed rather than building it."""
    return StageRef(
        stage=manifest.stage,
        key=manifest.key,
        counts=dict(manifest.counts),
        reused=reused,
        built_by=manifest.built_by,
        built_at=manifest.created_at,
        resumed_progress_records=manifest.resumed_progress_records,
    )


def _build(
    store: Store,
    spec: StageSpec,
    build: Callable,
    log: Log,
    built_by: str,
    check_held: Callable[[], None],
) -> Manifest:
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
        built_by=built_by,
        resumed_progress_records=len(writer.resumed_states),
    )
    check_held()  # a run whose lock was broken meanwhile commits nothing
    store.write_json(f"{writer.prefix}/{MANIFEST_NAME}", manifest.model_dump(mode="json"))
    log.info("%s: committed %s", spec.stage, store.uri(writer.prefix))
    store.remove(f"{writer.prefix}/{PROGRESS_DIR}")
    return manifest


def read_manifest(store: Store, ref: StageRef) -> Manifest:
    """The manifest of a committed output that a reference points at."""
    manifest = load_manifest(store, ref.stage, ref.key)
    if manifest is None:
        raise StoreError(
            f"{store.uri(ref.prefix)} has no committed manifest; rerun the pipeline to rebuild it"
        )
    return manifest


def input_ref(store: Store, ref: StageRef, name: str) -> StageRef:
    """The committed output that ``ref`` was built from as its input ``name`` (its lineage).

    A manifest that names no such input, or one that is not ``stage/key``, is a
    ``DamagedManifestError``; an input that is gone is a ``StoreError``.
    """
    manifest = read_manifest(store, ref)
    stage, _, key = manifest.inputs.get(name, "").rpartition("/")
    try:
        parent = StageRef(stage=stage, key=key)
    except ValueError:
        raise DamagedManifestError(
            f"{store.uri(ref.prefix)} names no input {name!r} as stage/key; rerun the "
            "pipeline to rebuild it"
        ) from None
    return committed_ref(read_manifest(store, parent), reused=True)


def part_names(manifest: Manifest, folder: str) -> list[str]:
    """The committed parts below a folder of an output, sorted."""
    return sorted(n for n in manifest.parts if n.startswith(f"{folder}/"))


def _expected(store: Store, ref: StageRef, name: str, manifest: Manifest | None) -> PartInfo:
    manifest = manifest or read_manifest(store, ref)
    if name not in manifest.parts:
        raise StoreError(f"{store.uri(ref.prefix)} has no part {name!r}")
    return manifest.parts[name]


def _corrupt(store: Store, ref: StageRef, name: str, expected: PartInfo, size: int, digest: str):
    where = store.uri(ref.prefix)
    return CorruptPartError(
        f"{where}/{name} is corrupt: {size} bytes with sha256 {digest[:16]}..., but its "
        f"manifest committed {expected.size} bytes with sha256 {expected.sha256[:16]}.... "
        f"It changed after it was written; run `codeparrot-ds verify --repair --store "
        f"{store.url}` (or delete {where}) and rerun to recompute that stage"
    )


def read_part(store: Store, ref: StageRef, name: str, manifest: Manifest | None = None) -> bytes:
    """A committed part's bytes, checked against its manifest."""
    expected = _expected(store, ref, name, manifest)
    data = store.read_bytes(f"{ref.prefix}/{name}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise _corrupt(store, ref, name, expected, len(data), digest)
    return data


def part_file(store: Store, ref: StageRef, name: str, manifest: Manifest | None = None) -> Path:
    """A local file holding a committed part, checked against its manifest.

    On a local store that is the stored file itself; a remote part is downloaded into a cache
    named by its sha256, so a cached copy is complete and right by construction.
    """
    expected = _expected(store, ref, name, manifest)
    local = store.local_file(f"{ref.prefix}/{name}")
    if local is not None:
        if not local.is_file():
            raise StoreError(
                f"{local} is missing or not a regular file; delete "
                f"{store.uri(ref.prefix)} and rerun"
            )
        digest = sha256_file(local)
        if digest != expected.sha256:
            raise _corrupt(store, ref, name, expected, local.stat().st_size, digest)
        return local
    blob = cache_root() / "blobs" / expected.sha256[:2] / expected.sha256
    if not blob.is_file():
        staging = make_private_dir(blob.parent, ".tmp-")
        try:
            tmp = staging / "part"
            store.get_file(f"{ref.prefix}/{name}", tmp)
            digest = sha256_file(tmp)
            if digest != expected.sha256:
                raise _corrupt(store, ref, name, expected, os.path.getsize(tmp), digest)
            os.replace(tmp, blob)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return blob


def part_folder(store: Store, ref: StageRef, folder: str) -> Path:
    """A local folder holding every committed part below ``folder``, each one checked.

    ``folder`` may be ``""`` for the whole output.
    """
    manifest = read_manifest(store, ref)
    names = sorted(n for n in manifest.parts if not folder or n.startswith(f"{folder}/"))
    if not names:
        raise StoreError(f"{store.uri(ref.prefix)} has no parts under {folder!r}")
    files = {
        n[len(folder) + 1 :] if folder else n: part_file(store, ref, n, manifest) for n in names
    }
    if store.is_local:
        return Path(store.local_file(f"{ref.prefix}/{folder}" if folder else ref.prefix))
    # Named by the parts' checksums: the same content is one folder, whatever store it is in.
    identity = json.dumps(
        {rel: manifest.parts[n].sha256 for rel, n in zip(files, names, strict=True)}
    )
    target = cache_root() / "folders" / hashlib.sha256(identity.encode()).hexdigest()[:24]
    if not target.is_dir():
        staging = make_private_dir(target.parent, ".tmp-")
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
