"""Source distributions from a package index (PEP 503 HTML or PEP 691 JSON): find the newest
sdist of a package, download it once into the store by its sha256, and read its members.

Nothing is built or installed: ``.py`` and ``.ipynb`` members are read straight from the
archive. Any index works: the public one pip is configured with, a mirror, or a company's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import Version
from pypi_simple import ProjectPage, UnsupportedRepoVersionError

from storage.errors import UserError
from storage.store import DamagedObjectError, Store

DEFAULT_INDEX_URL = "https://pypi.org/simple"
# Seconds before an index or download that does not answer is an error, not a hang.
TIMEOUT_SECONDS = 15
# Seconds a whole page or archive may take: a server that answers a byte at a time, each within
# the timeout above, must not hold a run forever. Archives are tens of MB, on slow links too.
PAGE_DEADLINE_SECONDS = 120
ARCHIVE_DEADLINE_SECONDS = 1800
# Source archives are tens of MB; anything far larger is not a source distribution.
MAX_ARCHIVE_BYTES = 512 << 20
ARCHIVES_DIR = "archives"
SDIST_SUFFIXES = (".tar.gz", ".zip")


class PackageIndexError(UserError, ValueError):
    """The index could not be reached, or holds no usable source distribution."""


@dataclass(frozen=True)
class Distribution:
    """One source distribution of a package on the index."""

    package: str
    version: str
    filename: str
    url: str
    sha256: str


def configured_index_url() -> str:
    """The index pip is configured with (``$PIP_INDEX_URL``, pip's config), else PyPI's."""
    if url := os.environ.get("PIP_INDEX_URL"):
        return url.split()[0]
    try:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_INDEX_URL
    return found.stdout.strip() or DEFAULT_INDEX_URL


class _Deadline:
    """Shuts the sockets of one exchange (redirects included) once it has taken too long."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _shut(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose connections this deadline watches."""
        deadline = self

        def watched(base):
            class Watched(base):
                def connect(self):
                    super().connect()
                    deadline._watch(self.sock)

            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(watched(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(watched(http.client.HTTPSConnection), req)

        return urllib.request.build_opener(HTTP, HTTPS)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _get(url: str, accept: str, deadline: float) -> tuple[bytes, str]:
    """The body and content type at ``url``, whole within ``deadline`` seconds."""
    request = urllib.request.Request(url, headers={"Accept": accept})
    watch = _Deadline(deadline)
    try:
        with watch, watch.opener().open(request, timeout=TIMEOUT_SECONDS) as response:
            data = response.read(MAX_ARCHIVE_BYTES + 1)
            if watch.expired:
                raise OSError("cut off")
            if len(data) > MAX_ARCHIVE_BYTES:
                raise PackageIndexError(f"{url} is over {MAX_ARCHIVE_BYTES:,} bytes")
            return data, response.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        if not watch.expired:
            raise _index_error(url, err) from None
        raise PackageIndexError(
            f"{url} did not finish answering within {deadline:g} s (it answers too slowly, "
            "perhaps a byte at a time); check corpus.index_url (or pip's index-url)"
        ) from None


def _index_error(url: str, err: BaseException) -> PackageIndexError:
    """The clear error for a failed request to the index."""
    if isinstance(err, urllib.error.HTTPError):
        if err.code == 404:
            return PackageIndexError(f"{url}: the index has no such package (404)")
        return PackageIndexError(f"{url} answered HTTP {err.code}")
    reason = getattr(err, "reason", err)
    return PackageIndexError(
        f"cannot reach the package index at {url} ({reason}); check corpus.index_url "
        "(or pip's index-url) and the network"
    )


def project_files(index_url: str, package: str) -> list[dict]:
    """The unyanked files the index lists for a package: filename, absolute url, sha256 (or
    None). Either page kind is parsed by ``pypi-simple``; a page that is neither is a clear
    error."""
    page = f"{index_url.rstrip('/')}/{canonicalize_name(package)}/"
    accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
    body, content_type = _get(page, accept, PAGE_DEADLINE_SECONDS)
    is_json = "json" in content_type
    try:
        if is_json:
            project = ProjectPage.from_json_data(json.loads(body), base_url=page)
        else:
            project = ProjectPage.from_html(package, body, base_url=page)
    except (ValueError, TypeError, UnsupportedRepoVersionError) as err:
        kind = "PEP 691 JSON" if is_json else "PEP 503 HTML"
        reason = str(err).splitlines()[0][:200]
        raise PackageIndexError(f"{page} is not a {kind} project page ({reason})") from None
    return [
        {"filename": file.filename, "url": file.url, "sha256": file.digests.get("sha256")}
        for file in project.packages
        # PEP 592: a yanked file is for those who pinned it, not for the newest release.
        if not file.is_yanked
    ]


def newest_sdist(index_url: str, package: str) -> Distribution:
    """The newest final release's source distribution of a package."""
    candidates = []
    for entry in project_files(index_url, package):
        if not entry["filename"].endswith(SDIST_SUFFIXES):
            continue
        try:
            _, version = parse_sdist_filename(entry["filename"])
        except InvalidSdistFilename:
            continue
        if not version.is_prerelease and not version.is_devrelease:
            candidates.append((version, entry))
    if not candidates:
        raise PackageIndexError(f"{index_url} lists no source distribution of {package!r}")
    version, entry = max(candidates, key=lambda item: item[0])
    return Distribution(
        package=str(canonicalize_name(package)),
        version=str(Version(str(version))),
        filename=entry["filename"],
        url=entry["url"],
        sha256=entry["sha256"] or "",
    )


def archive_path(sha256: str) -> str:
    """Where an archive is kept in the store: named by its content."""
    return f"{ARCHIVES_DIR}/{sha256}"


def fetch_archive(store: Store, dist: Distribution, present: dict[str, int]) -> tuple[str, int]:
    """Make sure the archive is in the store; return its sha256 and size. ``present`` is the
    store's listing of archives (sha256 to size): an archive already there is not downloaded.
    """
    if dist.sha256 in present:
        return dist.sha256, present[dist.sha256]
    data, _ = _get(dist.url, "*/*", ARCHIVE_DEADLINE_SECONDS)
    digest = hashlib.sha256(data).hexdigest()
    if dist.sha256 and digest != dist.sha256:
        raise PackageIndexError(
            f"{dist.url} does not match the sha256 the index lists ({digest[:16]}... != "
            f"{dist.sha256[:16]}...); the download or the index is damaged"
        )
    store.write_bytes(archive_path(digest), data)
    return digest, len(data)


def read_archive(store: Store, sha256: str) -> bytes:
    """An archive's bytes from the store, checked against the sha256 it is named by."""
    data = store.read_bytes(archive_path(sha256))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DamagedObjectError(
            f"{store.uri(archive_path(sha256))} is damaged (its sha256 differs); delete it "
            "and rerun to download it again"
        )
    return data


class DamagedArchiveError(PackageIndexError):
    """An archive that cannot be read to its end: truncated, a bad checksum, or one that
    inflates past ``MAX_INFLATED_BYTES``."""


def archive_members(
    data: bytes, suffixes: tuple[str, ...], max_bytes: int
) -> Iterator[tuple[str, bytes | None]]:
    """(path, bytes) of each regular member whose name ends with a suffix; bytes is None for
    a member over ``max_bytes``. Links, devices and folders in the archive are never read.

    Raises ``DamagedArchiveError`` (naming the member) where the archive cannot be read on,
    and before inflating past ``MAX_INFLATED_BYTES`` in all: a compression bomb costs no more
    than that cap's time and never its size in memory.
    """
    member = "the archive's index"
    inflated = 0
    try:
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    member = info.filename
                    if info.is_dir() or not info.filename.endswith(suffixes):
                        continue
                    if info.file_size > max_bytes:
                        yield info.filename, None
                        continue
                    inflated = _count_inflated(inflated, info.file_size, member)
                    yield info.filename, archive.read(info)
            return
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for entry in archive:
                member = entry.name
                # Moving past a member inflates it, read or not: its size counts either way.
                inflated = _count_inflated(inflated, entry.size, member)
                if not entry.isfile() or not entry.name.endswith(suffixes):
                    continue
                if entry.size > max_bytes:
                    yield entry.name, None
                    continue
                extracted = archive.extractfile(entry)
                yield entry.name, extracted.read() if extracted else None
    except DamagedArchiveError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        reason = str(err) or type(err).__name__
        raise DamagedArchiveError(f"damaged at {member} ({reason})") from None


# What reading one archive may inflate to, in all: far more than any source distribution.
MAX_INFLATED_BYTES = 2 << 30


def _count_inflated(total: int, size: int, member: str) -> int:
    total += max(size, 0)
    if total > MAX_INFLATED_BYTES:
        raise DamagedArchiveError(
            f"inflates past {MAX_INFLATED_BYTES:,} bytes at {member}: not a source "
            "distribution (a compression bomb?)"
        )
    return total
