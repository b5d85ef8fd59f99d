"""Cutting the corpus into groups: content-defined, so new files change few groups."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.data import DaskSettingError, local_workers, resolve_dask_address
from storage.settings import SettingsError
from tasks.corpus.groups import cut_by_path, limit_listing, table_fingerprint


def listing(paths: list[str], root: str = "/code", size: int = 100) -> pa.Table:
    return pa.table(
        {
            "root": [root] * len(paths),
            "path": paths,
            "size": pa.array([size] * len(paths), pa.int64()),
            "mtime_ns": pa.array([0] * len(paths), pa.int64()),
        }
    )


def fingerprints(table: pa.Table, group_files: int = 20, max_bytes: int = 1 << 30) -> list[str]:
    return [table_fingerprint(g) for g in cut_by_path(table, group_files, max_bytes)]


def test_every_file_is_in_one_group_in_path_order():
    paths = [f"pkg{i % 13}/mod_{i}.py" for i in range(1000)]
    groups = cut_by_path(listing(paths), 20, 1 << 30)
    cut = [p for g in groups for p in g["path"].to_pylist()]
    assert cut == sorted(paths)
    assert 25 <= len(groups) <= 80  # about one boundary in 20 files


def test_a_new_package_changes_at_most_one_old_group():
    paths = [f"pkg{i % 13}/mod_{i}.py" for i in range(1000)]
    before = fingerprints(listing(paths))
    added = [f"pkg6_new/mod_{i}.py" for i in range(50)]  # lands in the middle of path order
    after = fingerprints(listing(paths + added))
    changed = [g for g in before if g not in after]
    assert len(changed) <= 1
    assert len(after) - (len(before) - len(changed)) <= 50 // 20 + 4  # the new files' groups


def test_a_new_root_changes_no_old_group():
    before = fingerprints(listing([f"a/m{i}.py" for i in range(300)], root="/x"))
    grown = pa.concat_tables(
        [
            listing([f"a/m{i}.py" for i in range(300)], root="/x"),
            listing([f"b/m{i}.py" for i in range(30)], root="/a-new-root"),
        ]
    )
    assert set(before) <= set(fingerprints(grown))


def test_the_size_cap_bounds_each_group():
    groups = cut_by_path(listing([f"m{i}.py" for i in range(500)], size=1000), 10_000, 10_000)
    assert all(sum(g["size"].to_pylist()) <= 10_000 for g in groups)


def test_limits_take_the_first_files_of_the_spread_order():
    table = listing([f"m{i}.py" for i in range(10)])
    assert limit_listing(table, 3, None).num_rows == 3
    assert limit_listing(table, None, 250).num_rows == 3  # 0, 100, 200 bytes before each
    assert limit_listing(table, None, None).num_rows == 10


def test_the_dask_address_comes_from_the_run_then_the_environment():
    env = {"CODEPARROT_DASK_ADDRESS": "tcp://127.0.0.1:8786"}
    assert resolve_dask_address("none", env)[0] == "none"
    assert resolve_dask_address(None, env) == ("tcp://127.0.0.1:8786", "$CODEPARROT_DASK_ADDRESS")
    assert resolve_dask_address(None, {}) == ("local", "the default")
    with pytest.raises(DaskSettingError, match="is not tcp://host:port"):
        resolve_dask_address("127.0.0.1:8786", {})
    with pytest.raises(SettingsError, match=r"\$CODEPARROT_DASK_WORKERS='-3' is invalid"):
        local_workers({"CODEPARROT_DASK_WORKERS": "-3"})
    assert local_workers({"CODEPARROT_DASK_WORKERS": "3"}) == 3


def test_a_scheduler_that_does_not_answer_is_one_clear_line():
    from deployments.seaweedfs import free_ports
    from flows.data import check_reachable

    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    with pytest.raises(DaskSettingError, match=f"no Dask scheduler answers at {address}"):
        check_reachable(address, timeout=2)


@pytest.mark.parametrize("peer", ["silent", "http"])
def test_a_port_that_is_not_a_dask_scheduler_is_one_clear_line_not_a_hang(peer):
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.data import check_reachable

    if peer == "http":
        server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port, stop = server.server_address[1], server.shutdown
    else:  # accepts, then says nothing
        listener = socket.create_server(("127.0.0.1", 0))
        port, stop = listener.getsockname()[1], listener.close
    address = f"tcp://127.0.0.1:{port}"
    try:
        with pytest.raises(DaskSettingError, match=f"no Dask scheduler answers at {address}"):
            check_reachable(address, timeout=2)
    finally:
        stop()
