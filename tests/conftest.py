"""Shared fixtures: a generated corpus, local and S3 stores, a small tokenizer and token shards."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from functools import partial

import pytest

# Stage retries wait seconds, not minutes, in tests (read when a task retries).
os.environ.setdefault("CODEPARROT_IO_RETRY_DELAYS", "1,3,8")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from storage.stages import StageRef, StageSpec, run_stage  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.corpus_maker import make_corpus  # noqa: E402

LOG = logging.getLogger("tests")

# Each folder of tests is one cost class; every test carries its folder's marker, so that
# `pytest -m unit` (make test-fast) selects by cost without a hand-kept list.
FOLDER_MARKERS = {
    "unit": "unit",
    "flows": "flow",
    "faults": "fault",
    "dask": "dask",
    "integration": "integration",
    "ui": "ui",
    "bench": "bench",
}


def pytest_collection_modifyitems(items):
    """Mark each test with its folder's cost class."""
    for item in items:
        item.add_marker(FOLDER_MARKERS[item.path.parent.name])


@pytest.fixture(autouse=True)
def group_tasks_in_process(request, monkeypatch):
    """The pipeline and fault tests run the group tasks in the flow's process: a local Dask
    cluster would add seconds to each of their many runs and test nothing they are about.
    tests/dask, the bench, the deployments and the first pipeline test use Dask."""
    if request.node.path.parent.name in ("flows", "faults"):
        monkeypatch.setenv("CODEPARROT_DASK_ADDRESS", "none")


@pytest.fixture
def cpu_hogs():
    """Two busy processes for the test's duration: the two cores are taken by other work."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.fixture
def store(tmp_path) -> Store:
    """An empty local store."""
    return Store(str(tmp_path / "store"))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A folder of generated data-science and plain Python files."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def session_store(tmp_path_factory) -> Store:
    """A store shared by session-scoped stage outputs."""
    return Store(str(tmp_path_factory.mktemp("session-store")))


@pytest.fixture(scope="session")
def documents_ref(corpus_dir, session_store) -> StageRef:
    """Filtered documents of the generated corpus, in many small shards."""
    from tasks.corpus.build import CorpusConfig, take_snapshot
    from tasks.corpus.read import iter_documents
    from tasks.filter.build import FilterConfig, filter_documents

    config = CorpusConfig(roots=[str(corpus_dir)])
    snapshot = take_snapshot(config)
    corpus_spec = StageSpec.of("corpus", {"config": config.model_dump()}, {}, "t")
    corpus = run_stage(session_store, corpus_spec, snapshot.write, LOG)
    filter_config = FilterConfig(valid_fraction=0.2, max_shard_bytes=8192)

    def build(writer):
        documents = partial(iter_documents, session_store, corpus)
        return filter_documents(documents, filter_config, writer)

    spec = StageSpec.of("filter/groups", filter_config, {"corpus": corpus}, "t")
    return run_stage(session_store, spec, build, LOG)


@pytest.fixture(scope="session")
def tokenizer_ref(documents_ref, session_store) -> StageRef:
    """A small BPE tokenizer trained on the generated corpus."""
    from storage.shards import iter_document_batches
    from tasks.tokenizer.build import TokenizerConfig, build_tokenizer

    config = TokenizerConfig(vocab_size=400)
    texts = iter_document_batches(session_store, documents_ref, "train")
    build = lambda writer: build_tokenizer(config, texts, writer)  # noqa: E731
    spec = StageSpec.of("tokenizer", config, {"d": documents_ref}, "t")
    return run_stage(session_store, spec, build, LOG)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_ref, session_store):
    """The loaded small tokenizer."""
    from tasks.tokenizer.build import load_stage_tokenizer

    return load_stage_tokenizer(session_store, tokenizer_ref)


@pytest.fixture(scope="session")
def tokens_ref(documents_ref, tokenizer_ref, tokenizer, session_store) -> StageRef:
    """Packed 32-token rows of the generated corpus."""
    from tasks.tokenize.build import TokenizeConfig, tokenize_documents, tokenize_spec

    config = TokenizeConfig(mode="packed", context_length=32)
    build = partial(tokenize_documents, session_store, documents_ref, tokenizer, config)
    return run_stage(session_store, tokenize_spec(documents_ref, tokenizer_ref, config), build, LOG)


@pytest.fixture
def data_store(tmp_path, session_store, tokens_ref) -> Store:
    """A fresh copy of the session store, holding documents, tokenizer and tokens: a test may
    build in it, and the copy checks that references work in a store that was moved."""
    copy = tmp_path / "data-store"
    shutil.copytree(session_store.local_file(""), copy)
    return Store(str(copy))


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server (SQLite, 127.0.0.1) for every flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with an access key pair, for the whole session."""
    from deployments.seaweedfs import SeaweedFS

    server = SeaweedFS(
        tmp_path_factory.mktemp("seaweedfs"), "codeparrot-test", secrets.token_hex(16)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_store(seaweedfs, monkeypatch) -> Store:
    """An empty store in a fresh bucket of the SeaweedFS server, with the environment set."""
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    Store(f"s3://{bucket}").fs.mkdir(bucket)
    return Store(f"s3://{bucket}/store")
