"""The store on a real S3 server (SeaweedFS): outages, bad credentials, corruption, races."""

from __future__ import annotations

import logging
import threading
import uuid
from functools import partial

import pytest

from flows.cli import main
from storage.shards import load_token_shards
from storage.stages import CorruptPartError, StageSpec, load_manifest, run_stage
from storage.store import Store, StoreError, StoreUnavailableError
from tasks.running import stage_task
from tasks.tokenize import TOKENIZE
from tasks.tokenize.build import TokenizeConfig, tokenize_documents, tokenize_spec

pytestmark = pytest.mark.slow
LOG = logging.getLogger("tests")


def test_store_operations_on_s3(s3_store):
    s3_store.check_access()
    s3_store.write_json("a/b.json", {"x": 1})
    assert s3_store.read_json("a/b.json") == {"x": 1}
    assert s3_store.exists("a/b.json")
    assert s3_store.list_sizes("a") == {"b.json": len(s3_store.read_bytes("a/b.json"))}
    assert s3_store.list_files("a") == ["b.json"]
    assert s3_store.create_exclusive("a/lock", b"1")
    assert not s3_store.create_exclusive("a/lock", b"2")
    assert s3_store.read_bytes("a/lock") == b"1"
    s3_store.remove("a")
    assert not s3_store.exists("a/b.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        s3_store.read_bytes("a/b.json")


def test_missing_bucket_is_a_clear_error(s3_store):
    with pytest.raises(StoreError, match="bucket .* does not exist; create it"):
        Store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x").check_access()


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(StoreError, match="contains credentials") as err:
        Store("s3://AKIA:topsecret@bucket/prefix")
    assert "topsecret" not in str(err.value)


def test_wrong_credentials_fail_at_start_without_leaking_the_secret(
    prefect_server, s3_store, monkeypatch, capsys, caplog, tmp_path
):
    secret = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(StoreError, match="refused.*credentials"):
        Store(s3_store.url).check_access()
    with caplog.at_level(logging.DEBUG):
        code = main(["run", "--store", s3_store.url, "--set", "corpus.roots=[/nonexistent]"])
    captured = capsys.readouterr()
    assert code == 2
    assert "access to" in captured.err and "refused" in captured.err
    for text in (captured.out, captured.err, caplog.text):
        assert secret not in text


def _tokenize_stage(source, documents_ref, tokenizer_ref, tokenizer, store, progress=None):
    """The tokenize stage reading documents from ``source`` and writing to ``store``."""
    config = TokenizeConfig(mode="packed", context_length=32, batch_size=2)
    spec = tokenize_spec(documents_ref, tokenizer_ref, config)
    build = partial(tokenize_documents, source, documents_ref, tokenizer, config, progress=progress)

    # The pipeline's own task options: I/O faults are retried with backoff.
    @stage_task(TOKENIZE, group=True)
    def tokenize_under_test():
        return run_stage(store, spec, build, LOG)

    tokenize = tokenize_under_test

    return spec, tokenize


def test_server_down_mid_stage_is_retried_until_it_is_back(
    prefect_server,
    seaweedfs,
    s3_store,
    session_store,
    documents_ref,
    tokenizer_ref,
    tokenizer,
    store,
    caplog,
):
    from prefect import flow

    outage = threading.Event()
    restarted = []

    def stop_once(split, documents, rows):
        if split == "train" and documents >= 20 and not outage.is_set():
            outage.set()
            seaweedfs.stop()
            # Longer than the S3 client's own retries ride out, so the task must retry.
            timer = threading.Timer(12.0, lambda: restarted.append(seaweedfs.start()))
            timer.start()

    spec, tokenize = _tokenize_stage(
        session_store, documents_ref, tokenizer_ref, tokenizer, s3_store, stop_once
    )
    try:
        with caplog.at_level(logging.INFO):
            ref = flow(tokenize)()
    finally:
        if seaweedfs.process is None:
            seaweedfs.start()
    assert outage.is_set() and restarted
    assert "cannot reach the store" in caplog.text
    assert ref.resumed_progress_records >= 1  # the retry kept the parts committed before it
    reference = _tokenize_stage(session_store, documents_ref, tokenizer_ref, tokenizer, store)[
        1
    ].fn()
    assert ref.counts == reference.counts
    s3_parts = load_manifest(s3_store, spec.stage, spec.key).parts
    assert s3_parts == load_manifest(store, spec.stage, spec.key).parts


def test_server_that_stays_down_fails_clearly_and_commits_nothing(
    prefect_server, seaweedfs, s3_store, session_store, documents_ref, tokenizer_ref, tokenizer
):
    from prefect import flow

    spec, tokenize = _tokenize_stage(
        session_store, documents_ref, tokenizer_ref, tokenizer, s3_store
    )
    seaweedfs.stop()
    try:
        # One retry shows that retries give up: the suite's three would only wait longer.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CODEPARROT_IO_RETRY_DELAYS", "1")
            with pytest.raises(StoreUnavailableError, match="cannot reach the store.*server is up"):
                flow(tokenize)()
    finally:
        seaweedfs.start()
    assert load_manifest(s3_store, spec.stage, spec.key) is None


def test_corrupted_part_on_s3_is_named(
    s3_store, session_store, documents_ref, tokenizer_ref, tokenizer
):
    spec, tokenize = _tokenize_stage(
        session_store, documents_ref, tokenizer_ref, tokenizer, s3_store
    )
    ref = tokenize.fn()
    name = sorted(p for p in load_manifest(s3_store, spec.stage, spec.key).parts if "train" in p)[0]
    data = bytearray(s3_store.read_bytes(f"{ref.prefix}/{name}"))
    data[-100] ^= 0xFF
    s3_store.write_bytes(f"{ref.prefix}/{name}", bytes(data))
    with pytest.raises(CorruptPartError, match=f"{name} is corrupt"):
        load_token_shards(s3_store, ref, "train")


def test_two_runs_of_one_stage_at_once_build_it_once(s3_store):
    spec = StageSpec.of("race", {"p": 1}, {}, "v1")
    builders = []
    started = threading.Event()

    def build(name, writer):
        builders.append(name)
        started.set()
        for i in range(4):
            writer.write_bytes(f"part-{i}", name.encode())
        return {"by": name}

    results = {}
    first = threading.Thread(
        target=lambda: results.update(a=run_stage(s3_store, spec, partial(build, "a"), LOG))
    )
    first.start()
    started.wait(30)
    results["b"] = run_stage(Store(s3_store.url), spec, partial(build, "b"), LOG)
    first.join()
    assert builders == ["a"]
    assert results["a"].key == results["b"].key and results["b"].counts == {"by": "a"}
    assert {s3_store.read_bytes(f"{spec.prefix}/part-{i}") for i in range(4)} == {b"a"}


def test_credentials_from_a_prefect_block(prefect_server, seaweedfs, s3_store, monkeypatch):
    from tasks.credentials import S3StoreCredentials, load_s3_credentials
    from tasks.running import open_store

    S3StoreCredentials(
        access_key_id=seaweedfs.access_key, secret_access_key=seaweedfs.secret_key
    ).save("test-s3", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("CODEPARROT_S3_CREDENTIALS_BLOCK", "test-s3")
    load_s3_credentials.cache_clear()
    with pytest.raises(StoreError, match="no S3 credentials"):  # no keys in the environment
        Store(s3_store.url).check_access()
    store = open_store(s3_store.url)  # the block's keys, given to this store alone
    store.check_access()
    assert store.credentials["key"] == seaweedfs.access_key
    with pytest.raises(StoreError, match="no S3 credentials"):  # nothing else was changed
        Store(s3_store.url).check_access()
    monkeypatch.setenv("CODEPARROT_S3_CREDENTIALS_BLOCK", "no-such-block")
    with pytest.raises(StoreError, match="no S3 credentials block named 'no-such-block'"):
        open_store(s3_store.url)
