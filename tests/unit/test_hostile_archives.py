"""Damaged archives, compression bombs and malformed index pages: each a clear error or a
counted skip, never a traceback or an unbounded inflate."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from storage.stages import StageSpec, run_stage
from tasks.corpus import package_index
from tasks.corpus.build import CorpusConfig, take_snapshot
from tasks.corpus.package_index import (
    DamagedArchiveError,
    PackageIndexError,
    archive_members,
    project_files,
)
from tasks.corpus.read import ReadStats, iter_documents
from tests.unit.test_packages import LOG, _sdist

SUFFIXES = (".py",)
FILES = {f"m{i}.py": b"import pandas as pd\n" * 200 for i in range(3)}


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"top/{name}", data)
    return buffer.getvalue()


def _read_all(data: bytes) -> list[str]:
    return [path for path, _ in archive_members(data, SUFFIXES, 1 << 20)]


def _bad_crc() -> bytes:
    data = _zip(FILES)
    # One byte of m1.py's compressed data flipped: the header still reads, the CRC does not.
    start = data.index(b"top/m1.py") + len("top/m1.py") + 5
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :]


@pytest.mark.parametrize(
    "damaged",
    [_sdist("top", FILES)[:-300], _zip(FILES)[:-40], _bad_crc()],
    ids=["truncated tar.gz", "truncated zip", "zip with a bad CRC"],
)
def test_a_damaged_archive_is_one_clear_error_naming_where(damaged):
    with pytest.raises(DamagedArchiveError, match="damaged at"):
        _read_all(damaged)


def test_a_compression_bomb_stops_at_the_inflation_cap_before_inflating_it(monkeypatch):
    monkeypatch.setattr(package_index, "MAX_INFLATED_BYTES", 10_000)
    data = _sdist("top", {"small.py": b"x = 1\n", "bomb.py": b"\0" * 50_000})
    found = archive_members(data, SUFFIXES, 1 << 20)
    assert next(found)[0] == "top/small.py"
    with pytest.raises(DamagedArchiveError, match="inflates past 10,000 bytes at top/bomb.py"):
        next(found)


def test_a_damaged_archive_is_a_counted_skip_for_the_corpus(tmp_path, store):
    archives = {
        "good-1.0.tar.gz": _sdist("good-1.0", {"examples/a.py": b"import pandas as pd\n"}),
        "bad-1.0.tar.gz": _sdist("bad-1.0", {"examples/a.py": b"import pandas\n" * 500})[:-200],
    }
    (tmp_path / "files").mkdir()
    for name, data in archives.items():
        (tmp_path / "files" / name).write_bytes(data)
        project = tmp_path / "simple" / name.split("-")[0]
        project.mkdir(parents=True)
        digest = hashlib.sha256(data).hexdigest()
        (project / "index.html").write_text(
            f'<a href="../../files/{name}#sha256={digest}">{name}</a>'
        )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = CorpusConfig(
            source="packages",
            packages=["good", "bad"],
            index_url=f"http://127.0.0.1:{server.server_address[1]}/simple",
        )
        snapshot = take_snapshot(config, store)
    finally:
        server.shutdown()
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    stats = ReadStats()
    assert [d.id for d in iter_documents(store, ref, stats)] == ["good-1.0/examples/a.py"]
    assert stats["skipped_damaged_archive"] == 1


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Page(SimpleHTTPRequestHandler):
    body = b""
    content_type = "application/vnd.pypi.simple.v1+json"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def page():
    """A one-page index on 127.0.0.1 whose answer the test sets."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Page, directory="."))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def _json_page(files) -> dict:
    """A PEP 691 project page of demo listing ``files``."""
    return {"meta": {"api-version": "1.0"}, "name": "demo", "files": files}


@pytest.mark.parametrize(
    "body",
    [
        _json_page([{"url": "a.tar.gz", "hashes": {}}]),
        _json_page(["a.tar.gz"]),
        _json_page({"a": 1}),
        _json_page([{"filename": 3, "url": "a.tar.gz", "hashes": {}}]),
        {"files": [{"filename": "a.tar.gz", "url": "a.tar.gz", "hashes": {}}]},
        {**_json_page([]), "meta": {"api-version": "2.0"}},
        [1, 2],
        "{not json",
    ],
    ids=[
        "no filename",
        "a string",
        "not a list",
        "a number",
        "no name or meta",
        "a newer major version",
        "not an object",
        "not json",
    ],
)
def test_a_malformed_json_page_is_a_clear_error(page, body):
    _Page.body, _Page.content_type = (
        (body if isinstance(body, str) else json.dumps(body)).encode(),
        "application/vnd.pypi.simple.v1+json",
    )
    with pytest.raises(PackageIndexError, match="is not a PEP 691 JSON project page"):
        project_files(page, "demo")


def test_both_page_kinds_skip_yanked_files(page):
    _Page.content_type = "text/html"
    _Page.body = (
        b'<a href="demo-1.0.tar.gz">demo-1.0.tar.gz</a>'
        b'<a href="demo-2.0.tar.gz" data-yanked="broken">demo-2.0.tar.gz</a>'
    )
    html = [f["filename"] for f in project_files(page, "demo")]
    _Page.content_type = "application/vnd.pypi.simple.v1+json"
    _Page.body = json.dumps(
        _json_page(
            [
                {"filename": "demo-1.0.tar.gz", "url": "demo-1.0.tar.gz", "hashes": {}},
                {
                    "filename": "demo-2.0.tar.gz",
                    "url": "demo-2.0.tar.gz",
                    "hashes": {},
                    "yanked": "broken",
                },
            ]
        )
    ).encode()
    assert html == [f["filename"] for f in project_files(page, "demo")] == ["demo-1.0.tar.gz"]


class _Drip(SimpleHTTPRequestHandler):
    """Answers a byte every 0.2 s, each well within the read timeout, for up to a minute."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "300")
        self.end_headers()
        for _ in range(300):
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return  # the client gave up, as it should
            time.sleep(0.2)

    def log_message(self, *args):
        pass


def test_an_index_that_drips_its_answer_is_cut_off_at_the_deadline(monkeypatch):
    monkeypatch.setattr(package_index, "PAGE_DEADLINE_SECONDS", 1.0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Drip, directory="."))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/simple"
        with pytest.raises(PackageIndexError, match="did not finish answering within 1 s"):
            project_files(url, "demo")
    finally:
        server.shutdown()
