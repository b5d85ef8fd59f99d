"""The data stages on a real Dask cluster: a `dask scheduler` and two `dask worker` processes
on 127.0.0.1, reporting to the session's Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

from deployments.seaweedfs import HOST, free_ports
from flows.data import DataConfig, run_data_stages
from storage.shards import iter_document_batches, union_members
from storage.stages import MANIFEST_NAME, load_manifest, read_manifest
from storage.store import Store
from tasks.corpus.build import CorpusConfig
from tasks.filter.build import FilterConfig
from tasks.tokenize.build import TokenizeConfig
from tasks.tokenizer.build import TokenizerConfig
from tests.corpus_maker import make_corpus
from tests.prefect_runs import run_logs, task_runs_within

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).parent / "dask")


class Cluster:
    """A scheduler and worker processes, each started as a user would start them."""

    def __init__(self, logs: Path, workers: int = 2) -> None:
        from prefect.settings import PREFECT_API_URL

        port = free_ports(1)[0]
        self.address = f"tcp://{HOST}:{port}"
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.processes = [
            self._start(
                "scheduler",
                [DASK, "scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"],
                env,
            )
        ]
        for n in range(workers):
            command = [
                DASK,
                "worker",
                self.address,
                "--host",
                HOST,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--name",
                f"w{n}",
            ]
            self.processes.append(self._start(f"worker-{n}", command, env))
        self.client = self._connect(workers)

    def _start(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"dask-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _connect(self, workers: int):
        from distributed import Client

        deadline = time.monotonic() + 90
        while True:
            try:
                client = Client(self.address, timeout=5)
                client.wait_for_workers(workers, timeout=60)
                return client
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def worker_pids(self) -> dict[str, int]:
        """Each worker's address and process id."""
        return self.client.run(os.getpid)

    def stop(self) -> None:
        self.client.close()
        for process in reversed(self.processes):
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def cluster(prefect_server, tmp_path):
    """A fresh Dask cluster for one test."""
    found = Cluster(tmp_path / "logs")
    yield found
    found.stop()


def data_config(root: Path, **filter_settings) -> DataConfig:
    """Small groups of the generated corpus, a small tokenizer."""
    return DataConfig(
        corpus=CorpusConfig(roots=[str(root)], group_files=40),
        filter=FilterConfig(valid_fraction=0.1, **filter_settings),
        tokenizer=TokenizerConfig(vocab_size=400),
        tokenize=TokenizeConfig(mode="packed", context_length=32),
    )


def output_digests(store: Store, ref) -> list[tuple[str, dict[str, str]]]:
    """Every member of a union with the sha256 of each of its parts, in order, and the
    union's own parts (member list, drop lists)."""
    rows = [(ref.prefix, {n: p.sha256 for n, p in read_manifest(store, ref).parts.items()})]
    for member in union_members(store, ref):
        parts = read_manifest(store, member.ref).parts
        rows.append((member.ref.prefix, {n: p.sha256 for n, p in parts.items()}))
    return rows


def plant_near_duplicates(root: Path) -> list[str]:
    """Near copies (a word changed) of files, in packages far from theirs in path order:
    another group. Returns the copies' contents."""
    copies = []
    for n, original in enumerate(sorted(root.glob("pkg0/*.py"))[:3]):
        text = original.read_text().replace("notes:", "remarks:")
        folder = root / "zzz_copies"
        folder.mkdir(exist_ok=True)
        (folder / f"copy_{n}.py").write_text(text)
        copies.append(text)
    return copies


def test_a_cluster_run_gives_the_same_shards_as_a_run_without_dask(cluster, tmp_path):
    root = make_corpus(tmp_path / "corpus", files=400, seed=3)
    copies = plant_near_duplicates(root)
    config = data_config(root)
    on_cluster = run_data_stages(config, str(tmp_path / "a"), cluster.address, {})
    # The workers' task runs and their logs reached the Prefect server.
    with get_client(sync_client=True) as client:
        [data_run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["codeparrot-ds-data"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        names = [t.name.rsplit("-", 1)[0] for t in task_runs_within(client, data_run.id)]
        logs = run_logs(client, data_run.id)
    assert names.count("filter-group") == on_cluster["groups"]["groups"]
    assert (
        sum(m.startswith("filter/groups: committed") for m in logs)
        == on_cluster["groups"]["groups"]
    )
    without = run_data_stages(config, str(tmp_path / "b"), "none", {})
    assert on_cluster["groups"]["groups"] >= 8
    assert on_cluster["groups"]["filtered"] == on_cluster["groups"]["groups"]
    for stage in ("filter", "tokenize"):
        a, b = on_cluster[stage], without[stage]
        assert a.key == b.key
        assert output_digests(Store(str(tmp_path / "a")), a) == output_digests(
            Store(str(tmp_path / "b")), b
        )
    # the near copies sit in another group than their originals, and are dropped
    documents, store = on_cluster["filter"], Store(str(tmp_path / "a"))
    assert documents.counts["near_duplicates"] >= len(copies)
    kept = {
        t for s in ("train", "valid") for b in iter_document_batches(store, documents, s) for t in b
    }
    assert not kept & set(copies)
    originals = {p.read_text() for p in sorted(root.glob("pkg0/*.py"))[:3]}
    assert originals <= kept


def test_adding_files_rebuilds_only_the_new_groups(cluster, tmp_path):
    root = make_corpus(tmp_path / "corpus", files=400, seed=5)
    store = str(tmp_path / "store")
    trained = run_data_stages(data_config(root), store, cluster.address, {})
    # The nightly deployment pins the tokenizer a run trained, so new files renumber nothing.
    pinned = Store(store).uri(f"{trained['tokenizer'].prefix}/tokenizer")
    config = data_config(root)
    config.tokenizer = TokenizerConfig(pretrained=pinned)
    before = run_data_stages(config, store, cluster.address, {})
    make_corpus(root / "zz_new", files=20, seed=6, plain_files=1)  # 21 files: +5%
    after = run_data_stages(config, store, cluster.address, {})

    # The new files come last in path order: they join the old last group (which has no
    # boundary after it) or start new ones; every other group is reused.
    new_groups = after["groups"]["groups"] - before["groups"]["groups"]
    assert 1 <= after["groups"]["filtered"] <= new_groups + 1
    assert after["groups"]["groups"] - after["groups"]["filtered"] >= before["groups"]["groups"] - 1
    # a group that kept no file has no tokenize task
    assert 1 <= after["groups"]["tokenized"] <= after["groups"]["filtered"]
    assert after["tokenizer"].key == before["tokenizer"].key
    assert after["tokenize"].counts["train_rows"] > before["tokenize"].counts["train_rows"]


def test_a_worker_killed_mid_task_is_survived(cluster, tmp_path):
    import threading

    root = make_corpus(tmp_path / "corpus", files=700, seed=7)
    config = data_config(root, max_shard_bytes=1024)  # a progress record every 1 KB kept
    config.corpus = CorpusConfig(roots=[str(root)], group_files=1_000_000)  # one big group
    store = Store(str(tmp_path / "store"))
    killed: list[str] = []

    def kill_the_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if len(list(store.local_file("filter/groups").glob("*/_progress/00002*.json"))):
                busy = [w for w, keys in cluster.client.processing().items() if keys]
                pids = cluster.worker_pids()
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
            time.sleep(0.05)

    store.local_file("filter/groups").mkdir(parents=True, exist_ok=True)
    killer = threading.Thread(target=kill_the_busy_worker)
    killer.start()
    survived = run_data_stages(config, store.url, cluster.address, {})
    killer.join()
    assert killed, "no worker was busy filtering when the test looked"
    reference = run_data_stages(config, str(tmp_path / "reference"), "none", {})
    for stage in ("filter", "tokenize"):
        assert output_digests(store, survived[stage]) == output_digests(
            Store(str(tmp_path / "reference")), reference[stage]
        )
    # The retry kept the progress the killed attempt had committed: its manifest says so.
    [group] = [f for f in store.list_files("filter/groups") if f.endswith(MANIFEST_NAME)]
    assert load_manifest(store, "filter/groups", group.split("/")[0]).resumed_progress_records >= 2


def test_a_local_cluster_leaves_this_processs_environment_as_it_was(tmp_path, monkeypatch):
    # Dask's nanny sets OMP_NUM_THREADS=1 (and others) here when it starts a worker; left set,
    # every process started after the data flow would run on one thread.
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    root = make_corpus(tmp_path / "corpus", files=40, seed=5)
    ran = run_data_stages(data_config(root), str(tmp_path / "store"), "local", {})
    assert ran["groups"]["groups"] >= 1
    assert [os.environ.get(name) for name in names] == [None, None, None]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
