"""Damaged or planted objects in the store are named, skipped or repaired; never trusted."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from storage.stages import (
    MANIFEST_NAME,
    DamagedManifestError,
    StageRef,
    StageSpec,
    load_manifest,
    read_manifest,
    run_stage,
)
from storage.store import DamagedObjectError, Store, StoreFullError
from storage.verify import repair, verify_store
from tasks.running import is_transient

LOG = logging.getLogger("tests")
SPEC = StageSpec.of("s", {"p": 1}, {}, "v1")


def _build(calls):
    def build(writer):
        calls.append(1)
        writer.write_bytes("a.txt", b"hello")
        writer.write_bytes("sub/b.bin", bytes(range(256)))
        return {"n": 2}

    return build


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe", b'{"stage": "s"}', b"[]"])
def test_a_damaged_manifest_is_named_and_rebuilt(store, caplog, garbage):
    calls = []
    ref = run_stage(store, SPEC, _build(calls), LOG)
    store.write_bytes(f"{ref.prefix}/{MANIFEST_NAME}", garbage)
    with pytest.raises(DamagedManifestError, match=rf"{MANIFEST_NAME} is damaged.*verify --repair"):
        read_manifest(store, ref)
    with caplog.at_level(logging.WARNING):
        again = run_stage(store, SPEC, _build(calls), LOG)
    # The same output again; only its commit time may differ (the rebuild can cross a second).
    assert calls == [1, 1]
    assert again.model_dump(exclude={"built_at"}) == ref.model_dump(exclude={"built_at"})
    assert "is damaged" in caplog.text and "rebuilding" in caplog.text


def test_a_manifest_naming_parts_outside_its_folder_is_damaged(store):
    ref = run_stage(store, SPEC, _build([]), LOG)
    data = json.loads(store.read_bytes(f"{ref.prefix}/{MANIFEST_NAME}"))
    data["parts"]["../../escape"] = data["parts"].pop("a.txt")
    store.write_json(f"{ref.prefix}/{MANIFEST_NAME}", data)
    with pytest.raises(DamagedManifestError, match="not a relative path inside the output"):
        load_manifest(store, ref.stage, ref.key)


def test_a_finished_output_with_a_missing_or_resized_part_is_rebuilt(store, caplog):
    calls = []
    ref = run_stage(store, SPEC, _build(calls), LOG)
    store.remove(f"{ref.prefix}/sub/b.bin")
    with caplog.at_level(logging.WARNING):
        run_stage(store, SPEC, _build(calls), LOG)
    assert calls == [1, 1] and "parts missing or resized: sub/b.bin" in caplog.text
    assert store.read_bytes(f"{ref.prefix}/sub/b.bin") == bytes(range(256))


def test_a_fifo_planted_in_the_store_is_refused_not_read(store):
    ref = run_stage(store, SPEC, _build([]), LOG)
    path = store.local_file(f"{ref.prefix}/{MANIFEST_NAME}")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DamagedManifestError, match="not a regular file"):
        load_manifest(store, ref.stage, ref.key)


def test_a_garbage_progress_record_is_not_trusted(store, caplog):
    store.write_bytes(f"{SPEC.prefix}/_progress/000000.json", b'{"parts": 7}')
    calls = []
    with caplog.at_level(logging.WARNING):
        run_stage(store, SPEC, _build(calls), LOG)
    assert calls == [1] and "is damaged" in caplog.text


def test_a_garbage_lock_is_broken_after_a_few_seconds(store, monkeypatch):
    import storage.lock

    monkeypatch.setattr(storage.lock, "GARBAGE_SECONDS", 0.5)
    store.write_bytes(f"{SPEC.prefix}/_lock.json", b"\x00garbage")
    calls = []
    run_stage(store, SPEC, _build(calls), LOG)
    assert calls == [1]


def test_refs_are_range_checked():
    with pytest.raises(ValueError, match="key"):
        StageRef(stage="s", key="../../etc")
    with pytest.raises(ValueError, match="stage"):
        StageRef(stage="../x", key="0" * 20)


def test_verify_finds_a_flipped_byte_and_repair_makes_the_next_run_rebuild(store, capsys):
    from flows.cli import main

    calls = []
    ref = run_stage(store, SPEC, _build(calls), LOG)
    assert verify_store(store).damage == []
    assert main(["verify", "--store", store.url]) == 0
    assert "no damage found" in capsys.readouterr().out

    path = store.local_file(f"{ref.prefix}/sub/b.bin")
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    report = verify_store(store)
    assert [(d.output, d.name) for d in report.damage] == [(ref.prefix, "sub/b.bin")]
    assert "sha256 differs" in report.damage[0].problem
    assert main(["verify", "--store", store.url]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {store.uri(ref.prefix)}/sub/b.bin" in out and "--repair" in out

    assert main(["verify", "--store", store.url, "--repair"]) == 0
    assert load_manifest(store, ref.stage, ref.key) is None
    run_stage(store, SPEC, _build(calls), LOG)
    assert calls == [1, 1] and verify_store(store).damage == []


def test_an_oversized_manifest_is_damaged_without_being_parsed(store):
    from storage.stages import MAX_MANIFEST_BYTES

    ref = run_stage(store, SPEC, _build([]), LOG)
    rel = f"{ref.prefix}/{MANIFEST_NAME}"
    data = json.loads(store.read_bytes(rel))
    data["padding"] = " " * MAX_MANIFEST_BYTES
    store.write_bytes(rel, json.dumps(data).encode())
    with pytest.raises(DamagedManifestError, match=f"over {MAX_MANIFEST_BYTES:,} bytes"):
        load_manifest(store, ref.stage, ref.key)
    [damage] = verify_store(store).damage
    assert (damage.output, damage.name) == (ref.prefix, MANIFEST_NAME)


def test_verify_lists_a_bounded_number_of_problems_per_output(store):
    from storage.verify import MAX_LISTED

    ref = run_stage(store, SPEC, _build([]), LOG)
    rel = f"{ref.prefix}/{MANIFEST_NAME}"
    data = json.loads(store.read_bytes(rel))
    part = data["parts"]["a.txt"]
    data["parts"].update({f"gone/{i}": part for i in range(500)})
    store.write_bytes(rel, json.dumps(data).encode())
    damage = verify_store(store).damage
    assert len(damage) == MAX_LISTED + 1
    assert damage[-1].problem == f"and {500 - MAX_LISTED:,} more problems"
    assert {d.output for d in damage} == {ref.prefix}  # repair uncommits that one output
    assert repair(store, damage) == [rel]


def test_verify_names_a_bad_latest(store):
    store.write_bytes("publish/m/LATEST", b"garbage")
    [damage] = verify_store(store).damage
    assert (damage.output, damage.name) == ("publish/m", "LATEST")
    assert repair(store, [damage]) == ["publish/m/LATEST"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "is not valid JSON"),
        (b'{"version": "../../../etc"}', "names no valid version"),
        (b'["a"]', "names no valid version"),
    ],
)
def test_generate_with_a_damaged_latest_is_one_clear_line(store, capsys, content, message):
    from flows.cli import main

    store.write_bytes("publish/codeparrot-ds/LATEST", content)
    assert main(["generate", "x", "--store", store.url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "rerun the pipeline" in err


def _statvfs_with_free(real, free_bytes):
    def fake(path):
        result = real(path)
        fields = list(result)
        fields[4] = free_bytes // result.f_frsize  # f_bavail
        return os.statvfs_result(fields)

    return fake


def test_a_full_disk_is_one_line_not_retried_and_leaves_no_temporary_file(store, monkeypatch):
    monkeypatch.setattr(os, "statvfs", _statvfs_with_free(os.statvfs, 4096))
    with pytest.raises(StoreFullError, match="no space left to write .*needs 1,0") as err:
        store.write_bytes("s/k/part", b"x" * 10_000)
    assert "\n" not in str(err.value) and "free space" in str(err.value)
    assert not is_transient(err.value)
    assert not [p for p in store.local_file("").rglob("*") if p.name.startswith(".tmp-")]


def test_a_real_full_disk_while_writing_is_cleaned_up(tmp_path, monkeypatch):
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        store = Store(str(mount / "store"))
        # Pretend the free-space check passed, so the write itself runs out of space.
        monkeypatch.setattr(os, "statvfs", _statvfs_with_free(os.statvfs, 1 << 40))
        with pytest.raises(StoreFullError, match="no space left") as err:
            store.write_bytes("s/k/part", b"x" * (1 << 20))
        assert not is_transient(err.value)
        assert not [p for p in mount.rglob("*") if p.name.startswith(".tmp-")]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_stored_files_follow_the_umask(store):
    old = os.umask(0o022)
    try:
        ref = run_stage(store, SPEC, _build([]), LOG)
    finally:
        os.umask(old)
    for rel in store.list_files(ref.prefix):
        mode = stat.S_IMODE(store.local_file(f"{ref.prefix}/{rel}").stat().st_mode)
        assert mode == 0o644, (rel, oct(mode))


def test_reading_json_that_is_not_json_names_the_object(store):
    store.write_bytes("x.json", b"\x00\x01")
    with pytest.raises(DamagedObjectError, match="x.json is not valid JSON"):
        store.read_json("x.json")
