"""Reading the corpus: skipped files are counted, other sources, clear errors."""

from __future__ import annotations

import json
import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.stages import StageSpec, run_stage
from tasks.corpus.build import CorpusConfig, CorpusError, take_snapshot
from tasks.corpus.read import ReadStats, iter_documents

LOG = logging.getLogger("tests")


def _read(store, config):
    snapshot = take_snapshot(config)
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    stats = ReadStats()
    return list(iter_documents(store, ref, stats)), stats


def test_bad_files_are_skipped_and_counted(tmp_path, store):
    root = tmp_path / "code"
    root.mkdir()
    (root / "good.py").write_text("import pandas as pd\n")
    (root / "binary.py").write_bytes(b"import os\x00\x01")
    (root / "latin1.py").write_bytes("name = 'caf\xe9'".encode("latin-1"))
    (root / "big.py").write_text("x = 1\n" * 1000)
    (root / "notes.txt").write_text("not python")
    (root / "vanishing.py").write_text("x = 1")
    config = CorpusConfig(roots=[str(root)], max_file_bytes=1000)
    snapshot = take_snapshot(config)
    spec = StageSpec.of("corpus", {"config": config.model_dump()}, {}, "t")
    ref = run_stage(store, spec, snapshot.write, LOG)
    (root / "vanishing.py").unlink()  # deleted after the listing: unreadable when streamed
    stats = ReadStats()
    docs = list(iter_documents(store, ref, stats))
    assert [d.id for d in docs] == ["good.py"]
    assert stats["skipped_binary"] == 1
    assert stats["skipped_non_utf8"] == 1
    assert stats["skipped_too_large"] == 1
    assert stats["skipped_unreadable"] == 1
    assert stats["seen"] == 5


def test_read_limits_stop_the_stream(corpus_dir, store):
    docs, stats = _read(store, CorpusConfig(roots=[str(corpus_dir)], max_files=7))
    assert len(docs) == 7 and stats["read"] == 7


def test_default_roots_are_site_packages():
    from tasks.corpus.build import default_roots

    assert any("site-packages" in root for root in default_roots())


def test_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="corpus is empty"):
        take_snapshot(CorpusConfig(roots=[str(tmp_path)]))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="is not a folder"):
        take_snapshot(CorpusConfig(roots=[str(tmp_path / "nope")]))


def test_jsonl_and_parquet_sources(tmp_path, store):
    records = [{"repo_name": "a/b", "path": f"f{i}.py", "content": f"x = {i}"} for i in range(3)]
    (tmp_path / "part.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "part.parquet")
    config = CorpusConfig(source="data_files", data_files=[str(tmp_path / "part.*")])
    docs, _ = _read(store, config)
    assert len(docs) == 6
    assert docs[0].id == "a/b/f0.py" and docs[0].content == "x = 0"


def test_data_file_without_content_column_is_a_clear_error(tmp_path, store):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"code": "x = 1"}))
    config = CorpusConfig(source="data_files", data_files=[str(tmp_path / "bad.jsonl")])
    with pytest.raises(CorpusError, match="no 'content' column"):
        _read(store, config)


def test_hub_source_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(CorpusError, match="could not reach the Hugging Face Hub"):
        take_snapshot(CorpusConfig(source="hub"))
    assert time.perf_counter() - started < 30  # fails fast, not after minutes of retries


def test_fifos_outside_links_and_undecodable_names_are_skipped_and_counted(tmp_path, store):
    import os

    root = tmp_path / "code"
    (root / "pkg").mkdir(parents=True)
    outside = tmp_path / "secret.py"
    outside.write_text("import pandas as pd  # outside the root\n")
    (root / "good.py").write_text("import pandas as pd\n")
    (root / "pkg" / "inside_target.py").write_text("import seaborn as sns\n")
    os.symlink(root / "pkg" / "inside_target.py", root / "inside_link.py")
    os.symlink(outside, root / "outside_link.py")
    os.mkfifo(root / "pipe.py")  # reading it would block forever
    bad_name = os.path.join(os.fsencode(root), b"caf\xe9.py")  # not UTF-8
    with open(bad_name, "wb") as f:
        f.write(b"import pandas as pd\n")

    config = CorpusConfig(roots=[str(root)])
    snapshot = take_snapshot(config)
    assert snapshot.skipped == {
        "skipped_outside_link": 1,
        "skipped_not_regular": 1,
        "skipped_bad_name": 1,
    }
    docs, stats = _read(store, config)
    assert sorted(d.id for d in docs) == ["good.py", "inside_link.py", "pkg/inside_target.py"]
    corpus_counts = run_stage(
        store,
        StageSpec.of("corpus", {"config": config.model_dump(), "x": 1}, {}, "t"),
        snapshot.write,
        LOG,
    ).counts
    assert corpus_counts["skipped_not_regular"] == 1 and corpus_counts["files"] == 3

    followed, _ = _read(store, CorpusConfig(roots=[str(root)], follow_outside_links=True))
    assert "outside_link.py" in {d.id for d in followed}


def test_a_file_swapped_for_a_fifo_after_the_listing_is_skipped(tmp_path, store):
    import os

    root = tmp_path / "code"
    root.mkdir()
    (root / "a.py").write_text("import pandas as pd\n")
    (root / "b.py").write_text("import pandas as pd\nx = 1\n")
    config = CorpusConfig(roots=[str(root)])
    snapshot = take_snapshot(config)
    params = {"config": config.model_dump(mode="json"), "fingerprint": snapshot.fingerprint()}
    ref = run_stage(store, StageSpec.of("corpus", params, {}, "t"), snapshot.write, LOG)
    (root / "b.py").unlink()
    os.mkfifo(root / "b.py")
    stats = ReadStats()
    assert [d.id for d in iter_documents(store, ref, stats)] == ["a.py"]
    assert stats["skipped_not_regular"] == 1


def test_a_data_file_that_is_not_regular_is_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "data.jsonl")
    with pytest.raises(CorpusError, match="not a regular, readable file"):
        take_snapshot(CorpusConfig(source="data_files", data_files=[str(tmp_path / "data.jsonl")]))
