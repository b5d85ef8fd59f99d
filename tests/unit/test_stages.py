"""Content-addressed stage outputs: build once, manifest last, leftovers never trusted."""

from __future__ import annotations

import logging

import pytest

from storage.stages import MANIFEST_NAME, StageSpec, load_manifest, run_stage, stage_key

LOG = logging.getLogger("tests")
SPEC = StageSpec.of("s", {"p": 1}, {}, "v1")


def _builder(calls):
    def build(writer):
        calls.append(1)
        writer.write_bytes("a.txt", b"hello")
        return {"n": 1}

    return build


def test_built_once_then_found(store):
    calls = []
    first = run_stage(store, SPEC, _builder(calls), LOG)
    second = run_stage(store, SPEC, _builder(calls), LOG)
    assert calls == [1]
    assert first == second
    manifest = load_manifest(store, "s", first.key)
    assert manifest.parts["a.txt"].size == 5
    assert manifest.parts["a.txt"].sha256.startswith("2cf24dba")


def test_key_depends_on_params_inputs_and_code():
    base = stage_key("s", {"p": 1}, {"x": "a/1"}, "v1")
    assert base == stage_key("s", {"p": 1}, {"x": "a/1"}, "v1")
    assert base != stage_key("s", {"p": 2}, {"x": "a/1"}, "v1")
    assert base != stage_key("s", {"p": 1}, {"x": "a/2"}, "v1")
    assert base != stage_key("s", {"p": 1}, {"x": "a/1"}, "v2")


def test_uncommitted_leftovers_are_rebuilt(store):
    key = stage_key("s", {"p": 1}, {}, "v1")
    store.write_bytes(f"s/{key}/a.txt", b"half-writ")  # an interrupted run's part
    store.write_bytes(f"s/{key}/stray.txt", b"junk")
    calls = []
    ref = run_stage(store, SPEC, _builder(calls), LOG)
    assert calls == [1]
    assert store.read_bytes(f"{ref.prefix}/a.txt") == b"hello"
    assert not store.exists(f"{ref.prefix}/stray.txt")


def test_failed_build_commits_nothing(store):
    def failing(writer):
        writer.write_bytes("a.txt", b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(store, SPEC, failing, LOG)
    key = stage_key("s", {"p": 1}, {}, "v1")
    assert not store.exists(f"s/{key}/{MANIFEST_NAME}")
    assert load_manifest(store, "s", key) is None
