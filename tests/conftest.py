"""Shared fixtures: a generated corpus, a local store, a small trained tokenizer."""

from __future__ import annotations

import logging
import os
from functools import partial

import pytest

from storage.stages import StageRef, StageSpec, run_stage
from storage.store import Store
from tests.corpus_maker import make_corpus

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOG = logging.getLogger("tests")


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
    """Filtered documents of the generated corpus."""
    from tasks.corpus import CorpusConfig, iter_documents, take_snapshot
    from tasks.filtering import FilterConfig, filter_documents

    config = CorpusConfig(roots=[str(corpus_dir)])
    snapshot = take_snapshot(config)
    corpus_spec = StageSpec.of("corpus", {"config": config.model_dump()}, {}, "t")
    corpus = run_stage(session_store, corpus_spec, snapshot.write, LOG)
    filter_config = FilterConfig(valid_fraction=0.2)

    def build(writer):
        return filter_documents(partial(iter_documents, corpus), filter_config, writer)

    spec = StageSpec.of("documents", filter_config, {"corpus": corpus}, "t")
    return run_stage(session_store, spec, build, LOG)


@pytest.fixture(scope="session")
def tokenizer_ref(documents_ref, session_store) -> StageRef:
    """A small BPE tokenizer trained on the generated corpus."""
    from storage.shards import iter_document_batches
    from tasks.tokenizer import TokenizerConfig, build_tokenizer

    config = TokenizerConfig(vocab_size=400)
    texts = iter_document_batches(documents_ref, "train")
    build = lambda writer: build_tokenizer(config, texts, writer)  # noqa: E731
    spec = StageSpec.of("tokenizer", config, {"d": documents_ref}, "t")
    return run_stage(session_store, spec, build, LOG)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_ref):
    """The loaded small tokenizer."""
    from tasks.tokenizer import load_stage_tokenizer

    return load_stage_tokenizer(tokenizer_ref)
