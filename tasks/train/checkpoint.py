"""Training checkpoints in the store: complete, atomic, the newest K kept.

A checkpoint is a folder ``step-00000100/`` of files (the main process's ``state.pt``, one
``rank-N.pt`` per process) and a ``_commit.json`` written last with each file's size and
sha256. A folder without a commit record, or whose files do not match it, is ignored, so a run
killed halfway through saving resumes from the checkpoint before.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from storage.store import DamagedObjectError, Store

COMMIT_NAME = "_commit.json"


def _folder(step: int) -> str:
    return f"step-{step:08d}"


def _file_info(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def to_bytes(payload: dict[str, Any]) -> bytes:
    """Serialise a checkpoint payload (tensors, numbers, strings, lists and dicts)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """Load a payload written by ``to_bytes``; only plain data and tensors are accepted."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@dataclass
class Checkpoint:
    """A committed checkpoint: its step and its files' bytes."""

    step: int
    files: dict[str, bytes]


class CheckpointStore:
    """Saves, finds and prunes the checkpoints under one folder of a store."""

    def __init__(
        self, store: Store, prefix: str, keep: int, log: logging.Logger | logging.LoggerAdapter
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.keep = keep
        self.log = log
        # Checksums of the files this process wrote, so the commit need not read them back.
        self._written: dict[tuple[int, str], dict[str, Any]] = {}

    def write_file(self, step: int, name: str, data: bytes) -> None:
        """Write one file of a checkpoint (each process writes its own)."""
        self.store.write_bytes(f"{self.prefix}/{_folder(step)}/{name}", data)
        self._written[step, name] = _file_info(data)

    def commit(self, step: int, names: list[str], meta: dict[str, Any]) -> None:
        """Commit a checkpoint whose files are all written, then drop the oldest beyond K."""
        files = {}
        for name in names:
            info = self._written.pop((step, name), None)
            if info is None:  # written by another process
                info = _file_info(self.store.read_bytes(f"{self.prefix}/{_folder(step)}/{name}"))
            files[name] = info
        record = {"step": step, "files": files, "saved_at": time.time(), **meta}
        self.store.write_json(f"{self.prefix}/{_folder(step)}/{COMMIT_NAME}", record)
        for old in self.committed_steps()[: -self.keep]:
            # The commit record goes first, so a half-deleted folder is never taken as whole.
            self.store.remove(f"{self.prefix}/{_folder(old)}/{COMMIT_NAME}")
            self.store.remove(f"{self.prefix}/{_folder(old)}")

    def committed_steps(self) -> list[int]:
        """Steps with a commit record, oldest first."""
        steps = []
        for rel in self.store.list_files(self.prefix):
            folder, _, name = rel.partition("/")
            if name == COMMIT_NAME and re.fullmatch(r"step-\d{8}", folder):
                steps.append(int(folder.removeprefix("step-")))
        return sorted(steps)

    def verified(self, names: list[str]) -> Iterator[tuple[Checkpoint, dict[str, Any]]]:
        """Committed checkpoints whose files ``names`` match their record, newest first, each
        with its record; any that does not verify is skipped with a warning."""
        for step in reversed(self.committed_steps()):
            folder = f"{self.prefix}/{_folder(step)}"
            try:
                record = self.store.read_json(f"{folder}/{COMMIT_NAME}")
                expected = {name: record["files"][name]["sha256"] for name in names}
            except (DamagedObjectError, FileNotFoundError, KeyError, TypeError) as err:
                self.log.warning(
                    "checkpoint %s: unreadable commit record (%s); skipped", folder, err
                )
                continue
            files = {}
            for name in names:
                try:
                    data = self.store.read_bytes(f"{folder}/{name}")
                except (FileNotFoundError, DamagedObjectError):
                    data = None
                if data is None or hashlib.sha256(data).hexdigest() != expected[name]:
                    self.log.warning("checkpoint %s: %s does not verify; skipped", folder, name)
                    break
                files[name] = data
            else:
                yield Checkpoint(step=step, files=files), record
