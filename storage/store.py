"""Object-store access over fsspec: a local folder (``file://``) or an S3 prefix (``s3://``).

A store is addressed by a URL string, never a ``Path``, so that ``s3://bucket/prefix`` survives
every hand-off. Paths inside the store are ``/``-separated and relative to its root.

S3 settings and credentials never travel in the URL or in flow parameters: they come from the
environment of the process that opens the store (see ``s3_options``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec

from storage.errors import RunFailure, UserError
from storage.settings import Settings, current_settings

DEFAULT_STORE_URL = Settings.model_fields["store"].default.removeprefix("./")
# Environment variable that overrides the default store URL.
STORE_URL_ENV = Settings.variable("store")
# Where remote objects are copied to be memory-mapped or loaded by libraries that need a folder.
CACHE_DIR_ENV = Settings.variable("cache_dir")
# S3 settings, read where the store is opened; credentials come from the usual AWS chain
# (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) or a Prefect block.
S3_ENDPOINT_ENV = Settings.variable("s3_endpoint_url")
S3_REGION_ENV = Settings.variable("s3_region")
S3_ADDRESSING_ENV = Settings.variable("s3_addressing_style")
S3_CREDENTIALS_BLOCK_ENV = Settings.variable("s3_credentials_block")


class StoreError(UserError, RuntimeError):
    """A store URL, object or credential could not be used; the message says what to do."""


class StoreUnavailableError(RunFailure, ConnectionError):
    """The store could not be reached; transient, so tasks retry it with backoff."""


class DamagedObjectError(StoreError):
    """A stored object is not what it should be (not JSON, not a regular file, out of range)."""


class StoreFullError(StoreError):
    """The disk under the store (or the local cache) is full or read-only: never transient."""


# errno values that retrying cannot fix: the disk must be freed or made writable first.
NOT_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# Free space kept in reserve beyond an object's own size before a local write starts.
FREE_SPACE_MARGIN = 1 << 20


def default_store_url() -> str:
    """The store URL of this process: ``$CODEPARROT_STORE``, else ``./codeparrot-store``."""
    return current_settings().store


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


def s3_options(credentials: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """s3fs arguments from the environment: endpoint, region, addressing style, credentials.

    ``credentials`` (s3fs's key, secret and token, from a Prefect block) win; otherwise
    botocore's own chain finds them.
    """
    settings = current_settings()
    style = settings.s3_addressing_style
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
    if endpoint := settings.s3_endpoint_url:
        options["endpoint_url"] = endpoint
    if region := settings.s3_region:
        options["client_kwargs"]["region_name"] = region
    if credentials:
        options.update(credentials)
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


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def disk_full_error(where: str | Path, needed: int | None, err: OSError | None = None):
    """The one-line error for a full or read-only disk: the path and the space it needs."""
    if err is not None and err.errno == errno.EROFS:
        return StoreFullError(f"{where} is on a read-only file system; make it writable")
    free = free_bytes(Path(str(where)).parent)
    need = f"{needed:,} bytes" if needed is not None else "more space"
    have = f"{free:,} bytes are free" if free is not None else "free space unknown"
    return StoreFullError(
        f"no space left to write {where}: it needs {need} ({have}); free space on that disk "
        "or point the store (or $CODEPARROT_CACHE_DIR) at a larger one"
    )


def check_free_space(target: Path, size: int) -> None:
    """Refuse a local write that cannot fit, before it starts and leaves a partial file."""
    free = free_bytes(target.parent)
    if free is not None and free < size + FREE_SPACE_MARGIN:
        raise disk_full_error(target, size + FREE_SPACE_MARGIN)


def open_regular(path: str | Path):
    """Open a local file for reading only if it is a regular file.

    A FIFO or device opened for reading blocks or never ends; O_NONBLOCK lets the check run
    before any read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedObjectError(f"{path} is not a regular file; remove it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_file_atomically(target: Path, blocks: Iterable[bytes], size: int | None) -> None:
    """Write a local file so that readers see either nothing or all of it.

    The temporary file is created with mode 0666 so the process umask decides who may read
    the result, as for any file the user writes; on any failure it is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        check_free_space(target, size)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            for block in blocks:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in NOT_TRANSIENT_ERRNOS:
            raise disk_full_error(target, size, err) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_private_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder under ``parent`` (created with the process umask)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{prefix}{uuid.uuid4().hex}"
    folder.mkdir()
    return folder


def _file_blocks(path: str | Path) -> Iterator[bytes]:
    with open_regular(path) as f:
        while block := f.read(1 << 22):
            yield block


class Store:
    """An object store rooted at a URL; every method takes a path relative to that root."""

    def __init__(self, url: str, credentials: Mapping[str, Any] | None = None) -> None:
        self.url = normalize_store_url(url)
        self.is_local = self.url.startswith("file://")
        # Given explicitly (a Prefect block's keys) and kept, so that a process this one
        # launches can be handed the same store; never logged or written.
        self.credentials = dict(credentials) if credentials and not self.is_local else None
        if self.is_local:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        else:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **s3_options(credentials))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def uri(self, rel: str) -> str:
        """The full URL of an object, for logs and messages."""
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
        except OSError as err:
            if err.errno in NOT_TRANSIENT_ERRNOS:
                raise disk_full_error(self.uri(rel), None, err) from None
            if isinstance(err, _transient_errors()):
                raise self._unavailable(rel, err) from err
            raise
        except _transient_errors() as err:
            raise self._unavailable(rel, err) from err
        except Exception as err:
            if type(err).__name__ != "NoCredentialsError":  # botocore's, imported lazily
                raise
            raise StoreError(
                f"no S3 credentials to read {self.uri(rel)}; set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or {S3_CREDENTIALS_BLOCK_ENV} with "
                "PREFECT_API_URL; with the local stack, run `source .stack/env.sh` first"
            ) from None

    def _unavailable(self, rel: str, err: BaseException) -> StoreUnavailableError:
        where = current_settings().s3_endpoint_url or "the S3 endpoint"
        return StoreUnavailableError(
            f"cannot reach the store at {where} for {self.uri(rel)} ({err}); "
            "check that the server is up and the endpoint is right"
        )

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

    def read_bytes(self, rel: str, max_bytes: int | None = None) -> bytes:
        """Read a whole object (on a local store, only a regular file); one over ``max_bytes``
        is a ``DamagedObjectError``, found after reading no more than that."""
        end = None if max_bytes is None else max_bytes + 1
        with self._errors(rel):
            try:
                if self.is_local:
                    with open_regular(self._path(rel)) as f:
                        data = f.read(-1 if end is None else end)
                else:
                    data = self.fs.cat_file(self._path(rel), start=0 if end else None, end=end)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri(rel)} does not exist") from None
            except IsADirectoryError:
                raise DamagedObjectError(f"{self.uri(rel)} is a folder, not a file") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise DamagedObjectError(f"{self.uri(rel)} is over {max_bytes:,} bytes")
        return data

    def read_json(self, rel: str, max_bytes: int | None = None) -> Any:
        """Read a JSON object; bytes that are not JSON are a ``DamagedObjectError``."""
        data = self.read_bytes(rel, max_bytes)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DamagedObjectError(f"{self.uri(rel)} is not valid JSON ({err})") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object so that readers see either nothing or all of it.

        On S3 one PUT is atomic already; a local file is written beside its target and renamed.
        """
        with self._errors(rel):
            if self.is_local:
                write_file_atomically(Path(self._path(rel)), [data], len(data))
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
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
                size = os.path.getsize(local_path)
                write_file_atomically(Path(self._path(rel)), _file_blocks(local_path), size)
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


def fetch_folder(url: str, credentials: Mapping[str, Any] | None = None) -> Path:
    """A local copy of a folder at any URL, for a model or tokenizer from outside the store.

    Remote copies are cached under a name made of the URL and the listing (names, sizes,
    ETags), so a folder changed in place is fetched again. Stage outputs are read through
    ``storage.stages.part_folder`` instead, which checks them.
    """
    store = Store(url, credentials)
    if store.is_local:
        return Path(store.root)
    with store._errors(""):
        listing = store.fs.find(store.root, detail=True)
    if not listing:
        raise FileNotFoundError(f"{store.url} holds no file")
    identity = json.dumps(
        [store.url]
        + [[p, info.get("size"), str(info.get("ETag", ""))] for p, info in sorted(listing.items())]
    )
    target = cache_root() / "external" / hashlib.sha256(identity.encode()).hexdigest()[:24]
    if not target.is_dir():
        staging = make_private_dir(target.parent, ".tmp-")
        try:
            with store._errors(""):
                store.fs.get(store.root + "/", str(staging) + "/", recursive=True)
            with contextlib.suppress(OSError):  # another process finished the same copy first
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_root() -> Path:
    """Where downloads from remote stores are kept (``$CODEPARROT_CACHE_DIR``)."""
    return Path(current_settings().cache_dir).expanduser()
