"""Content-addressed stage outputs: build once, manifest last, leftovers never trusted."""

from __future__ import annotations

import logging

import pytest

from storage.stages import (
    MANIFEST_NAME,
    DamagedManifestError,
    StageSpec,
    input_ref,
    load_manifest,
    run_stage,
    stage_key,
)

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
    first = run_stage(store, SPEC, _builder(calls), LOG, built_by="flow run a (1)")
    second = run_stage(store, SPEC, _builder(calls), LOG, built_by="flow run b (2)")
    assert calls == [1]
    assert (first.key, first.counts) == (second.key, second.counts)
    # The second found it: it says so, and who built it.
    assert (first.reused, second.reused) == (False, True)
    assert first.built_by == second.built_by == "flow run a (1)"
    assert second.built_at == first.built_at != ""
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


def _part_builder(parts, record_every=None, fail_after=None):
    """Writes ``parts`` names; commits progress every ``record_every``; fails after a count."""

    def build(writer):
        done = len(writer.parts)
        for index, name in enumerate(parts[done:], start=done):
            if fail_after is not None and index == fail_after:
                raise OSError("connection reset")
            writer.write_bytes(name, name.encode())
            if record_every and (index + 1) % record_every == 0:
                writer.record_progress({"written": index + 1})
        return {"n": len(writer.parts)}

    return build


def test_interrupted_build_resumes_from_its_progress_records(store):
    names = [f"p{i}" for i in range(6)]
    with pytest.raises(OSError):
        run_stage(store, SPEC, _part_builder(names, record_every=2, fail_after=5), LOG)
    # p0..p3 are committed by two records; p4 was written after the last record.
    assert store.exists(f"{SPEC.prefix}/p4")
    seen = {}

    def resume(writer):
        seen["states"] = list(writer.resumed_states)
        seen["parts"] = sorted(writer.parts)
        return _part_builder(names)(writer)

    ref = run_stage(store, SPEC, resume, LOG)
    assert seen["states"] == [{"written": 2}, {"written": 4}]
    assert seen["parts"] == ["p0", "p1", "p2", "p3"]
    assert sorted(load_manifest(store, "s", ref.key).parts) == names
    assert not store.exists(f"{SPEC.prefix}/_progress")


def test_progress_record_with_a_missing_part_is_not_trusted(store):
    names = [f"p{i}" for i in range(4)]
    with pytest.raises(OSError):
        run_stage(store, SPEC, _part_builder(names, record_every=1, fail_after=3), LOG)
    store.remove(f"{SPEC.prefix}/p1")  # the second record now lists a missing part
    seen = {}

    def resume(writer):
        seen["parts"] = sorted(writer.parts)
        return _part_builder(names)(writer)

    run_stage(store, SPEC, resume, LOG)
    assert seen["parts"] == ["p0"]  # records after the broken one are dropped too


def test_corrupted_part_is_a_clear_error_naming_it(store):
    from storage.stages import CorruptPartError, part_file, read_part

    ref = run_stage(store, SPEC, _builder([]), LOG)
    assert read_part(store, ref, "a.txt") == b"hello"
    path = store.local_file(f"{ref.prefix}/a.txt")
    path.write_bytes(b"jello")
    where = store.uri(ref.prefix)
    for read in (read_part, part_file):
        with pytest.raises(CorruptPartError, match=rf"{where}/a.txt is corrupt.*delete"):
            read(store, ref, "a.txt")


def test_a_second_builder_waits_for_the_first_and_reuses_its_output(store):
    import threading
    import time

    builders = []
    started = threading.Event()

    def slow(name):
        def build(writer):
            builders.append(name)
            started.set()
            for i in range(5):
                writer.write_bytes(f"part-{i}", name.encode())
                time.sleep(0.1)
            return {"by": name}

        return build

    results = {}
    first = threading.Thread(
        target=lambda: results.update(a=run_stage(store, SPEC, slow("a"), LOG))
    )
    first.start()
    started.wait(10)
    results["b"] = run_stage(store, SPEC, slow("b"), LOG)
    first.join()
    assert builders == ["a"]
    assert results["a"].counts == results["b"].counts == {"by": "a"}
    assert (results["a"].reused, results["b"].reused) == (False, True)
    assert {store.read_bytes(f"{SPEC.prefix}/part-{i}") for i in range(5)} == {b"a"}
    assert not store.exists(f"{SPEC.prefix}/_lock.json")


def test_a_lock_left_by_a_dead_process_is_broken(store):
    import json
    import socket

    dead = {"owner": "x", "host": socket.gethostname(), "pid": 2**22 + 1, "heartbeat": 0}
    store.write_bytes(f"{SPEC.prefix}/_lock.json", json.dumps(dead).encode())
    calls = []
    run_stage(store, SPEC, _builder(calls), LOG)
    assert calls == [1]


def test_a_lock_left_by_an_ended_attempt_of_this_process_is_taken_at_once(store):
    import json
    import os
    import socket
    import time

    from storage.lock import StageLock

    rel = f"{SPEC.prefix}/_lock.json"
    # What an attempt leaves when the store was unreachable as it released: a fresh heartbeat.
    left = {"owner": "a" * 32, "host": socket.gethostname(), "pid": os.getpid()}
    store.write_bytes(rel, json.dumps({**left, "heartbeat": time.time()}).encode())
    retry = StageLock(store, rel, LOG)
    with retry.hold(until=lambda: True) as held:
        assert held and store.read_json(rel)["owner"] == retry.owner
        # A lock this process holds now is not stale to another thread of it.
        with StageLock(store, rel, LOG).hold(until=lambda: True) as second:
            assert not second
    assert not store.exists(rel)


def test_a_planted_lock_owner_names_no_object_to_remove(store):
    import json
    import socket

    store.write_bytes("victim/keep.txt", b"kept")
    planted = {"owner": "../../../../victim", "host": socket.gethostname(), "pid": 2**22 + 1}
    store.write_bytes(f"{SPEC.prefix}/_lock.json", json.dumps(planted).encode())
    calls = []
    run_stage(store, SPEC, _builder(calls), LOG)
    assert calls == [1] and store.read_bytes("victim/keep.txt") == b"kept"


def _breaker(store, rel):
    """Another run whose time-to-live has the holder's heartbeat stale at once."""
    from storage.lock import StageLock

    other = StageLock(store, rel, LOG)
    other.ttl = 0.0
    return other


def test_a_holder_whose_lock_was_broken_stops_beating_and_never_overwrites_it(store):
    from storage.lock import LockLostError, StageLock

    rel = f"{SPEC.prefix}/_lock.json"
    holder = StageLock(store, rel, LOG)
    holder.ttl = 3600.0  # its own heartbeat thread stays asleep: the test beats by hand
    with holder.hold(until=lambda: False) as held:
        assert held and holder._beat_once()
        other = _breaker(store, rel)
        assert other._try_acquire()  # the holder's beat is "stale" to it: broken and taken
        assert not holder._beat_once()
        assert store.read_json(rel)["owner"] == other.owner
        with pytest.raises(LockLostError, match="broken by another run"):
            holder.check_held()
    # The old holder's release left the new holder's lock in place.
    assert store.read_json(rel)["owner"] == other.owner
    assert not store.exists(f"{rel}.beat-{holder.owner}")


def test_a_build_whose_lock_was_broken_meanwhile_commits_nothing(store):
    from storage.lock import LockLostError

    def build(writer):
        writer.write_bytes("a.txt", b"first")
        assert _breaker(store, f"{SPEC.prefix}/_lock.json")._try_acquire()
        return {"n": 1}

    with pytest.raises(LockLostError):
        run_stage(store, SPEC, build, LOG)
    assert load_manifest(store, SPEC.stage, SPEC.key) is None
    assert store.exists(f"{SPEC.prefix}/_lock.json")  # the other run's, kept


def test_an_output_names_the_outputs_it_was_built_from(store):
    parent = run_stage(store, SPEC, _builder([]), LOG)
    child_spec = StageSpec.of("t", {}, {"source": parent}, "v1")
    child = run_stage(store, child_spec, _builder([]), LOG)
    assert input_ref(store, child, "source") == parent.model_copy(update={"reused": True})
    with pytest.raises(DamagedManifestError, match="names no input 'other'"):
        input_ref(store, child, "other")
