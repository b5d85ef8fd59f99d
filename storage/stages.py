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
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from storage.store import Store, StoreError

MANIFEST_NAME = "_manifest.json"
KEY_LENGTH = 20


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


def stage_key(stage: str, params: dict[str, Any], inputs: dict[str, str], version: str) -> str:
    """The content key of a stage output."""
    blob = json.dumps(
        {"stage": stage, "params": params, "inputs": inputs, "code": version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StageWriter:
    """Writes the parts of one stage output and commits them with a manifest."""

    def __init__(self, store: Store, stage: str, key: str) -> None:
        self.store = store
        self.stage = stage
        self.key = key
        self.prefix = f"{stage}/{key}"
        self.parts: dict[str, PartInfo] = {}

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


def load_manifest(store: Store, stage: str, key: str) -> Manifest | None:
    """The committed manifest of a stage output, or None if it was never committed."""
    rel = f"{stage}/{key}/{MANIFEST_NAME}"
    if not store.exists(rel):
        return None
    try:
        return Manifest.model_validate(store.read_json(rel))
    except ValueError as err:
        raise StoreError(
            f"{store.uri(rel)} is not a valid manifest ({err}); delete that folder to recompute it"
        ) from err


def run_stage(
    store: Store,
    stage: str,
    params: BaseModel | dict[str, Any],
    inputs: dict[str, StageRef],
    version: str,
    build: Callable[[StageWriter], dict[str, Any]],
    log: logging.Logger | logging.LoggerAdapter,
) -> StageRef:
    """Return the committed output for these inputs, building and committing it if needed.

    ``build`` writes the parts through the writer it is given and returns the output's counts.
    An output is visible only once its manifest is written, after every part.
    """
    param_dict = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    input_keys = {name: f"{ref.stage}/{ref.key}" for name, ref in inputs.items()}
    key = stage_key(stage, param_dict, input_keys, version)
    manifest = load_manifest(store, stage, key)
    if manifest is not None:
        log.info("%s: found committed output %s; nothing to do", stage, store.uri(f"{stage}/{key}"))
        return StageRef(stage=stage, key=key, store_url=store.url, counts=manifest.counts)

    writer = StageWriter(store, stage, key)
    # Leftovers of an interrupted run were never committed: start from an empty folder.
    store.remove(writer.prefix)
    log.info("%s: building %s", stage, store.uri(writer.prefix))
    counts = build(writer)
    manifest = Manifest(
        stage=stage,
        key=key,
        code_version=version,
        params=param_dict,
        inputs=input_keys,
        parts=writer.parts,
        counts=counts,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    store.write_json(f"{writer.prefix}/{MANIFEST_NAME}", manifest.model_dump(mode="json"))
    log.info("%s: committed %s", stage, store.uri(writer.prefix))
    return StageRef(stage=stage, key=key, store_url=store.url, counts=counts)


def read_manifest(ref: StageRef) -> Manifest:
    """The manifest of a committed output that a reference points at."""
    manifest = load_manifest(ref.store(), ref.stage, ref.key)
    if manifest is None:
        raise StoreError(f"{ref.uri} has no committed manifest; rerun the pipeline to rebuild it")
    return manifest
