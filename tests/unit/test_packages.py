"""The packages corpus: sdists from a PEP 503 index on 127.0.0.1, notebooks as Python."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import tarfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from storage.stages import StageSpec, run_stage
from tasks.corpus.build import CorpusConfig, CorpusError, take_snapshot
from tasks.corpus.notebooks import notebook_to_python
from tasks.corpus.read import ReadStats, iter_documents

LOG = logging.getLogger("tests")
PLOT = "import matplotlib.pyplot as plt\n\nx = [1, 2]\nplt.scatter(x, x)\n"
NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {},
    "cells": [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": "# Scatter\nPlot x against y.\n\nMore.",
        },
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": 1,
            "source": "%matplotlib inline\n!pip install x\nplt.scatter(x, y)",
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "OUTPUT"}],
        },
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": 2,
            "source": "%%bash\nls",
            "outputs": [],
        },
    ],
}


def _sdist(top: str, files: dict[str, bytes], link: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(f"{top}/link.py")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def index(tmp_path):
    """A PEP 503 index served from a folder on 127.0.0.1, with the sdists it lists."""
    root = tmp_path / "index"
    archives = {
        "demo-1.0.tar.gz": _sdist("demo-1.0", {"old.py": b"import pandas as pd\n"}),
        "demo-1.1.tar.gz": _sdist(
            "demo-1.1",
            {
                "examples/plot.py": PLOT.encode(),
                "notebooks/intro.ipynb": json.dumps(NOTEBOOK).encode(),
                "notebooks/broken.ipynb": b"{not a notebook",
                "data/huge.py": b"x = 1\n" * 50_000,
                "README.txt": b"not read",
            },
            link=True,
        ),
        "demo-2.0rc1.tar.gz": _sdist("demo-2.0rc1", {"new.py": b"x = 1\n"}),
    }
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("zipdemo-0.1/tutorial.py", "import seaborn as sns\nsns.histplot(df)\n")
    archives["zipdemo-0.1.zip"] = zipped.getvalue()
    (root / "files").mkdir(parents=True)
    for project, names in {"demo": list(archives)[:3], "zipdemo": ["zipdemo-0.1.zip"]}.items():
        (root / "simple" / project).mkdir(parents=True)
        links = []
        for name in names:
            (root / "files" / name).write_bytes(archives[name])
            digest = hashlib.sha256(archives[name]).hexdigest()
            links.append(f'<a href="../../files/{name}#sha256={digest}">{name}</a>')
        (root / "simple" / project / "index.html").write_text("\n".join(links))
    _Handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def test_the_newest_sdists_are_read_straight_from_their_archives(index, store):
    config = CorpusConfig(source="packages", packages=["demo", "zipdemo"], index_url=index)
    config = config.model_copy(update={"max_file_bytes": 100_000})
    snapshot = take_snapshot(config, store)
    versions = [g.column("version")[0].as_py() for g in snapshot.groups]
    assert versions == ["1.1", "0.1"]  # one group per archive
    assert [g["label"] for g in snapshot.group_index] == ["demo-1.1", "zipdemo-0.1"]
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    stats = ReadStats()
    docs = {d.id: d.content for d in iter_documents(store, ref, stats)}
    assert sorted(docs) == [
        "demo-1.1/examples/plot.py",
        "demo-1.1/notebooks/intro.ipynb",
        "zipdemo-0.1/tutorial.py",
    ]
    assert docs["demo-1.1/examples/plot.py"] == PLOT
    assert (
        docs["demo-1.1/notebooks/intro.ipynb"]
        == "# Scatter\n# Plot x against y.\nplt.scatter(x, y)\n"
    )
    assert stats["skipped_too_large"] == 1 and stats["skipped_bad_notebook"] == 1
    assert stats["notebooks_read"] == 1

    downloads = [r for r in _Handler.requests if r.startswith("/files/")]
    assert len(downloads) == 2
    take_snapshot(config, store)  # a rerun: the archives are found in the store by sha256
    assert [r for r in _Handler.requests if r.startswith("/files/")] == downloads


def test_an_unreachable_index_is_a_clear_error_within_seconds(store):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    config = CorpusConfig(
        source="packages", packages=["demo"], index_url=f"http://127.0.0.1:{port}/simple"
    )
    started = time.monotonic()
    with pytest.raises(CorpusError, match="cannot reach the package index.*corpus.index_url"):
        take_snapshot(config, store)
    assert time.monotonic() - started < 10


def test_a_package_the_index_does_not_have_is_named(index, store):
    config = CorpusConfig(source="packages", packages=["no-such-package"], index_url=index)
    with pytest.raises(CorpusError, match="no-such-package.*404"):
        take_snapshot(config, store)


def test_notebooks_become_python_with_short_comments_before_their_code():
    assert notebook_to_python(json.dumps(NOTEBOOK)) == (
        "# Scatter\n# Plot x against y.\nplt.scatter(x, y)\n"
    )


def test_member_patterns_keep_only_usage_code(index, store):
    config = CorpusConfig(
        source="packages",
        packages=["demo"],
        index_url=index,
        member_patterns=["examples/*", "*.ipynb"],
        max_file_bytes=100_000,
    )
    snapshot = take_snapshot(config, store)
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    stats = ReadStats()
    ids = sorted(d.id for d in iter_documents(store, ref, stats))
    assert ids == ["demo-1.1/examples/plot.py", "demo-1.1/notebooks/intro.ipynb"]
    assert stats["skipped_too_large"] == 0  # data/huge.py is not even looked at


LIBRARY_MODULE = b'''def head(df):
    """First rows.

    Take the first two rows of a frame:

    >>> df = pd.DataFrame({"a": [1, 2, 3]})
    >>> df.head(2)
       a
    0  1
    """
'''
GUIDE_PAGE = b"""Plotting
========

Draw a scatter plot:

.. code-block:: python

   plt.scatter(df["a"], df["b"])
"""
TEST_MODULE = b"""import pandas as pd


def test_sum_of_a_column():
    df = pd.DataFrame({"a": [1, 2]})
    total = df["a"].sum()
    assert total == 3
"""


def test_docstrings_doc_pages_and_tests_of_an_archive_become_usage_documents(tmp_path, store):
    from flows.report import data_report
    from tasks.filter.build import FilterConfig, filter_documents

    archive = _sdist(
        "usage-1.0",
        {
            "usage/core.py": LIBRARY_MODULE,
            "usage/tests/test_core.py": TEST_MODULE,
            "doc/guide.rst": GUIDE_PAGE,
            "doc/whatsnew/v1.0.rst": GUIDE_PAGE,
            "examples/plot.py": PLOT.encode(),
        },
    )
    root = tmp_path / "usage-index"
    (root / "files").mkdir(parents=True)
    (root / "simple" / "usage").mkdir(parents=True)
    (root / "files" / "usage-1.0.tar.gz").write_bytes(archive)
    digest = hashlib.sha256(archive).hexdigest()
    (root / "simple" / "usage" / "index.html").write_text(
        f'<a href="../../files/usage-1.0.tar.gz#sha256={digest}">usage-1.0.tar.gz</a>'
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = CorpusConfig(
            source="packages",
            packages=["usage"],
            index_url=f"http://127.0.0.1:{server.server_address[1]}/simple",
            member_patterns=["examples/*"],
            kinds=["code", "docstrings", "docs", "tests"],
            tests_keep_fraction=1.0,
        )
        snapshot = take_snapshot(config, store)
    finally:
        server.shutdown()
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    docs = list(iter_documents(store, ref, ReadStats()))
    assert {(d.id, d.kind, d.content) for d in docs} == {
        ("usage-1.0/examples/plot.py", "code", PLOT),
        (
            "usage-1.0/usage/core.py",
            "docstrings",
            '# Take the first two rows of a frame\ndf = pd.DataFrame({"a": [1, 2, 3]})\n'
            "df.head(2)\n",
        ),
        (
            "usage-1.0/usage/tests/test_core.py",
            "tests",
            '# sum of a column\ndf = pd.DataFrame({"a": [1, 2]})\ntotal = df["a"].sum()\n',
        ),
        (
            "usage-1.0/doc/guide.rst",
            "docs",
            '# Draw a scatter plot\nplt.scatter(df["a"], df["b"])\n',
        ),
    }

    # The filter keeps the test functions (they are not "test files") and counts each kind.
    filter_config = FilterConfig(
        keywords=["pd.", "plt."], valid_fraction=0.01, config_or_test_keep_fraction=0.0
    )
    spec = StageSpec.of("filter", {"t": 1}, {}, "t")
    opened = lambda stats, skip: iter_documents(store, ref, stats, skip)  # noqa: E731
    counts = run_stage(
        store, spec, lambda w: filter_documents(opened, filter_config, w), LOG
    ).counts
    assert {k: v for k, v in counts.items() if k.startswith("kept")} == {
        "kept": 4,
        "kept_code": 1,
        "kept_docstrings": 1,
        "kept_docs": 1,
        "kept_tests": 1,
    }
    assert counts["test_functions_seen"] == counts["test_functions_kept"] == 1
    report = data_report({}, counts, {}, by_group={"usage-1.0": counts})
    kinds_rows = [line for line in report.splitlines() if line.startswith("| usage-1.0 ")]
    assert kinds_rows == ["| usage-1.0 | 1 | 0 | 1 | 0 | 1 | 0 | 1 | 0 |"]
