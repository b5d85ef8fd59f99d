"""Object-store access over fsspec: a local folder (``file://``) or an S3 prefix (``s3://``).

A store is addressed by a URL string, never a ``Path``, so that ``s3://bucket/prefix`` survives
every hand-off. Paths inside the store are ``/``-separated and relative to its root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

DEFAULT_STORE_URL = "codeparrot-store"
# Environment variable that overrides the default store URL.
STORE_URL_ENV = "CODEPARROT_STORE"
# Where remote objects are copied to be memory-mapped or loaded by libraries that need a folder.
CACHE_DIR_ENV = "CODEPARROT_CACHE_DIR"


class StoreError(RuntimeError):
    """A store URL or object could not be used; the message says what to do."""


def normalize_store_url(url: str) -> str:
    """Turn a plain path into an absolute ``file://`` URL; keep other URLs as given."""
    url = url.strip()
    if not url:
        raise StoreError(
            "store URL is empty: give a folder path, file:///path or s3://bucket/prefix"
        )
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    protocol = url.split("://", 1)[0]
    if protocol not in fsspec.available_protocols():
        raise StoreError(
            f"store URL {url!r} uses unknown protocol {protocol!r}; use file:// or s3://"
        )
    return url.rstrip("/")


class Store:
    """An object store rooted at a URL; every method takes a path relative to that root."""

    def __init__(self, url: str) -> None:
        self.url = normalize_store_url(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = self.url.startswith("file://")

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def uri(self, rel: str) -> str:
        """The full URL of an object, for references, logs and model cards."""
        return f"{self.url}/{rel}" if rel else self.url

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        """Whether an object or folder exists."""
        return self.fs.exists(self._path(rel))

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole object."""
        try:
            return self.fs.cat_file(self._path(rel))
        except FileNotFoundError as err:
            raise StoreError(f"{self.uri(rel)} does not exist") from err

    def read_json(self, rel: str) -> Any:
        """Read a JSON object."""
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object so that readers see either nothing or all of it.

        On S3 one PUT is atomic already; a local file is written beside its target and renamed.
        """
        if self.is_local:
            target = Path(self._path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(f.name, target)
        else:
            self.fs.pipe_file(self._path(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a JSON object atomically."""
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def put_file(self, local_path: str | Path, rel: str) -> None:
        """Upload one local file (atomically on a local store)."""
        if self.is_local:
            target = Path(self._path(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".tmp-{target.name}")
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local_path), self._path(rel))

    def remove(self, rel: str) -> None:
        """Delete an object or a folder and everything below it; missing is fine."""
        path = self._path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def local_path(self, rel: str) -> Path:
        """A local path holding this object or folder, downloading it first if the store is remote.

        Downloads land in a cache folder named by the object's URL; stage outputs are immutable
        once committed, so a finished download is reused as is.
        """
        if self.is_local:
            return Path(self._path(rel))
        cache_root = Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "codeparrot-ds"))
        digest = hashlib.sha256(self.uri(rel).encode()).hexdigest()[:24]
        target = cache_root / digest
        done = target.with_suffix(".done")
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.fs.isdir(self._path(rel)):
                self.fs.get(self._path(rel) + "/", str(target) + "/", recursive=True)
            else:
                self.fs.get_file(self._path(rel), str(target))
            done.touch()
        return target
