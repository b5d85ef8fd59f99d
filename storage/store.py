"""Object-store access over fsspec: a local folder (``file://``) or an S3 prefix (``s3://``).

A store is addressed by a URL string, never a ``Path``, so that ``s3://bucket/prefix`` survives
every hand-off. Paths inside the store are ``/``-separated and relative to its root.

S3 settings and credentials never travel in the URL or in flow parameters: they come from the
environment of the process that opens the store (see ``s3_options``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec

DEFAULT_STORE_URL = "codeparrot-store"
# Environment variable that overrides the default store URL.
STORE_URL_ENV = "CODEPARROT_STORE"
# Where remote objects are copied to be memory-mapped or loaded by libraries that need a folder.
CACHE_DIR_ENV = "CODEPARROT_CACHE_DIR"
# S3 settings, read where the store is opened; credentials come from the usual AWS chain
# (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) or a Prefect block.
S3_ENDPOINT_ENV = "CODEPARROT_S3_ENDPOINT_URL"
S3_REGION_ENV = "CODEPARROT_S3_REGION"
S3_ADDRESSING_ENV = "CODEPARROT_S3_ADDRESSING_STYLE"
S3_CREDENTIALS_BLOCK_ENV = "CODEPARROT_S3_CREDENTIALS_BLOCK"
ADDRESSING_STYLES = ("auto", "path", "virtual")


class StoreError(RuntimeError):
    """A store URL, object or credential could not be used; the message says what to do."""


class StoreUnavailableError(ConnectionError):
    """The store could not be reached; transient, so tasks retry it with backoff."""


def default_store_url() -> str:
    """The store URL of this process: ``$CODEPARROT_STORE``, else ``./codeparrot-store``."""
    return os.environ.get(STORE_URL_ENV, DEFAULT_STORE_URL)


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
    if protocol not in ("file", "s3"):
        raise StoreError(f"store URL protocol {protocol!r} is not supported; use file:// or s3://")
    if protocol == "s3":
        parts = urlsplit(url)
        if "@" in parts.netloc:
            # Never echo the URL: it holds a secret.
            raise StoreError(
                "the s3:// store URL contains credentials; remove them from the URL and set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an AWS profile, or "
                f"{S3_CREDENTIALS_BLOCK_ENV} instead"
            )
        if not parts.netloc:
            raise StoreError(f"store URL {url!r} names no bucket; use s3://bucket/prefix")
    return url.rstrip("/")


def s3_options() -> dict[str, Any]:
    """s3fs arguments from the environment: endpoint, region, addressing style, credentials.

    Without a credentials block, botocore's own chain finds the credentials.
    """
    style = os.environ.get(S3_ADDRESSING_ENV, "auto")
    if style not in ADDRESSING_STYLES:
        raise StoreError(
            f"{S3_ADDRESSING_ENV}={style!r} is invalid; use one of: auto, path, virtual"
        )
    options: dict[str, Any] = {
        "config_kwargs": {
            "s3": {"addressing_style": style},
            # Fail fast when the server is down; the task's retries wait for it to come back.
            "connect_timeout": 5,
            "read_timeout": 120,
            "retries": {"max_attempts": 3, "mode": "standard"},
        },
        "client_kwargs": {},
        # Other writers change the bucket under us: never answer from a stale listing.
        "use_listings_cache": False,
    }
    if key := os.environ.get("AWS_ACCESS_KEY_ID"):
        # Passed explicitly so that s3fs's instance cache keeps one client per key pair.
        options["key"] = key
        options["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
        options["token"] = os.environ.get("AWS_SESSION_TOKEN")
    if endpoint := os.environ.get(S3_ENDPOINT_ENV):
        options["endpoint_url"] = endpoint
    if region := os.environ.get(S3_REGION_ENV):
        options["client_kwargs"]["region_name"] = region
    if block_name := os.environ.get(S3_CREDENTIALS_BLOCK_ENV):
        from storage.credentials import load_s3_credentials

        options.update(load_s3_credentials(block_name))
    return options


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the store could not be reached (network, server down)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errors += [
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.ReadTimeoutError,
        ]
    return tuple(errors)


class Store:
    """An object store rooted at a URL; every method takes a path relative to that root."""

    def __init__(self, url: str) -> None:
        self.url = normalize_store_url(url)
        self.is_local = self.url.startswith("file://")
        if self.is_local:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        else:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **s3_options())

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def uri(self, rel: str) -> str:
        """The full URL of an object, for references, logs and model cards."""
        return f"{self.url}/{rel}" if rel else self.url

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Turn a backend's errors into ones that say what happened and what to do."""
        try:
            yield
        except (StoreError, StoreUnavailableError, FileNotFoundError, FileExistsError):
            raise
        except PermissionError as err:
            raise StoreError(
                f"access to {self.uri(rel)} was refused ({err}); check the S3 credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                f"{S3_CREDENTIALS_BLOCK_ENV}) and that they may read and write this bucket"
            ) from None
        except _transient_errors() as err:
            where = os.environ.get(S3_ENDPOINT_ENV, "the S3 endpoint")
            raise StoreUnavailableError(
                f"cannot reach the store at {where} for {self.uri(rel)} ({err}); "
                "check that the server is up and the endpoint is right"
            ) from err

    def check_access(self) -> None:
        """Fail early, with advice, if the store cannot be listed and written."""
        with self._errors(""):
            if self.is_local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
                if not os.access(self.root, os.W_OK):
                    raise StoreError(f"store folder {self.root} is not writable")
                return
            bucket = self.root.split("/", 1)[0]
            try:
                self.fs.ls(bucket, refresh=True)
            except FileNotFoundError:
                raise StoreError(
                    f"bucket {bucket!r} of store {self.url} does not exist; create it first"
                ) from None

    def exists(self, rel: str) -> bool:
        """Whether an object or folder exists."""
        with self._errors(rel):
            return self.fs.exists(self._path(rel))

    def list_sizes(self, rel: str) -> dict[str, int]:
        """Every object below a folder with its size, keyed by path relative to that folder."""
        base = self._path(rel).rstrip("/")
        with self._errors(rel):
            if not self.fs.exists(base):
                return {}
            found = self.fs.find(base, detail=True)
        return {p[len(base) + 1 :]: int(info["size"]) for p, info in found.items() if p != base}

    def list_files(self, rel: str) -> list[str]:
        """Every object below a folder, as paths relative to that folder, sorted."""
        return sorted(self.list_sizes(rel))

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole object."""
        with self._errors(rel):
            try:
                return self.fs.cat_file(self._path(rel))
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri(rel)} does not exist") from None

    def read_json(self, rel: str) -> Any:
        """Read a JSON object."""
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object so that readers see either nothing or all of it.

        On S3 one PUT is atomic already; a local file is written beside its target and renamed.
        """
        with self._errors(rel):
            if self.is_local:
                target = Path(self._path(rel))
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(
                    dir=target.parent, prefix=".tmp-", delete=False
                ) as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(f.name, target)
            else:
                self.fs.pipe_file(self._path(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a JSON object atomically."""
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write an object only if it does not exist yet; return whether this call created it.

        A local file uses O_EXCL; S3 uses a conditional PUT (If-None-Match: *).
        """
        with self._errors(rel):
            if self.is_local:
                target = Path(self._path(rel))
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return True
            try:
                self.fs.pipe_file(self._path(rel), data, mode="create")
            except OSError as err:  # s3fs reports a failed If-None-Match as errno 22
                if isinstance(err, FileExistsError) or "pre-condition" in str(err).lower():
                    return False
                raise
            return True

    def put_file(self, local_path: str | Path, rel: str) -> None:
        """Upload one local file (atomically on a local store)."""
        with self._errors(rel):
            if self.is_local:
                target = Path(self._path(rel))
                target.parent.mkdir(parents=True, exist_ok=True)
                with (
                    tempfile.NamedTemporaryFile(
                        dir=target.parent, prefix=".tmp-", delete=False
                    ) as tmp,
                    open(local_path, "rb") as src,
                ):
                    while block := src.read(1 << 22):
                        tmp.write(block)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.replace(tmp.name, target)
            else:
                self.fs.put_file(str(local_path), self._path(rel))

    def get_file(self, rel: str, local_path: str | Path) -> None:
        """Download one object to a local file."""
        with self._errors(rel):
            try:
                self.fs.get_file(self._path(rel), str(local_path))
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri(rel)} does not exist") from None

    def local_file(self, rel: str) -> Path | None:
        """The path of an object on a local store (None on a remote one)."""
        return Path(self._path(rel)) if self.is_local else None

    def remove(self, rel: str) -> None:
        """Delete an object or a folder and everything below it; missing is fine."""
        path = self._path(rel)
        with self._errors(rel):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)


def fetch_folder(url: str) -> Path:
    """A local copy of a folder at any URL, for a model or tokenizer from outside the store.

    Stage outputs are read through ``storage.stages.part_folder`` instead, which checks them.
    """
    store = Store(url)
    if store.is_local:
        return Path(store.root)
    target = cache_root() / "external" / hashlib.sha256(store.url.encode()).hexdigest()[:24]
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(dir=_ensure(target.parent), prefix=".tmp-"))
        with store._errors(""):
            store.fs.get(store.root + "/", str(staging) + "/", recursive=True)
        staging.rename(target)
    return target


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_root() -> Path:
    """Where downloads from remote stores are kept (``$CODEPARROT_CACHE_DIR``)."""
    default = Path.home() / ".cache" / "codeparrot-ds"
    return Path(os.environ.get(CACHE_DIR_ENV, default))
