"""Prefect result storage in the pipeline's own store, beside the stage outputs.

A stage task's cache key is the URL of a record inside its output folder,
``{store}/{stage}/{key}/_prefect_result``, so every worker that can reach the store shares the
cache, and deleting an output deletes its cached result with it. A record is only honoured
while the output's manifest is there: a half-deleted output is rebuilt, never half-trusted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prefect.filesystems import WritableFileSystem

from storage.stages import MANIFEST_NAME, RESULT_RECORD, StageSpec
from storage.store import Store, default_store_url, normalize_store_url


def _split(url: str) -> tuple[Store, str]:
    folder, name = url.rsplit("/", 1)
    return Store(folder), name


class StoreResultStorage(WritableFileSystem):
    """Reads and writes Prefect result records addressed by full store URLs."""

    _block_type_name = "CodeParrot-DS Store Results"
    _block_type_slug = "codeparrot-ds-store-results"

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The record at ``path``; missing if the output beside it is not committed."""
        store, name = _split(path)
        if name == RESULT_RECORD and not store.exists(MANIFEST_NAME):
            raise FileNotFoundError(f"{store.url} is not committed; its cached result is void")
        return store.read_bytes(name)

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        """Write the record at ``path`` atomically."""
        store, name = _split(path)
        store.write_bytes(name, content)
        return path

    async def aread_path(self, path: str) -> bytes:
        """Async form of ``read_path``."""
        return await asyncio.to_thread(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Async form of ``write_path``."""
        return await asyncio.to_thread(self.write_path, path, content)


RESULT_BLOCK_NAME = "pipeline-store"
# How tasks name the block: Prefect only takes result storage that is saved on its server.
RESULT_STORAGE_REF = f"{StoreResultStorage._block_type_slug}/{RESULT_BLOCK_NAME}"


def ensure_result_storage() -> None:
    """Save the result-storage block on the Prefect server; idempotent, holds no secret."""
    StoreResultStorage().save(RESULT_BLOCK_NAME, overwrite=True, _sync=True)


def open_run_store(store_url: str | None) -> str:
    """Check that a run can use its store and keep its results there; return the store's URL.

    None means this process's default store, so a worker's environment can choose it.
    """
    url = normalize_store_url(store_url or default_store_url())
    Store(url).check_access()
    ensure_result_storage()
    return url


def stage_cache_key(spec_of: Callable[..., StageSpec]) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn``: the URL of the result record in the stage's output folder.

    ``spec_of`` takes the task's parameters (including ``store_url``) and returns its spec.
    """

    def cache_key(context: Any, parameters: dict[str, Any]) -> str:
        store = Store(parameters["store_url"])
        return store.uri(f"{spec_of(**parameters).prefix}/{RESULT_RECORD}")

    return cache_key
