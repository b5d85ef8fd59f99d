"""The data stages as one flow: the per-group filter and tokenize tasks run on Dask.

By default a local Dask cluster (one worker process per core) runs them; given the address of
an existing scheduler (``tcp://host:port``), that cluster does, and the same code scales from a
laptop to many machines. Workers reach the store, not each other: a task's arguments and result
are references, and each worker reads and writes the groups it was given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dask
from distributed.diagnostics.plugin import WorkerPlugin
from prefect import flow, get_run_logger, unmapped
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel

from flows.config import ConfigError
from flows.failures import install_one_line_failures
from storage.settings import Settings, current_settings
from storage.shards import drop_digests
from storage.stages import StageRef, StageSpec, find_committed
from storage.store import Store
from tasks.corpus.build import CorpusConfig, read_groups, read_settings
from tasks.corpus.read import snapshot_config
from tasks.corpus.task import stream_corpus
from tasks.filter.build import FilterConfig, filter_spec
from tasks.filter.task import deduplicate_groups, filter_group
from tasks.running import open_store, stage_logger
from tasks.tokenize.build import TokenizeConfig, tokenize_spec
from tasks.tokenize.task import join_token_groups, tokenize_group
from tasks.tokenizer.build import TokenizerConfig
from tasks.tokenizer.task import train_tokenizer

DASK_ADDRESS_ENV = Settings.variable("dask_address")
DASK_WORKERS_ENV = Settings.variable("dask_workers")
# Run the group tasks in the flow's own process (Prefect's thread pool), without Dask.
NO_DASK = "none"


# One worker per core: a task must not also spread over every core (the tokenizers library
# encodes a batch on all of them by default), or the workers only slow each other down.
ONE_CORE_PER_WORKER = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAYON_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}


# Dask queues a large map on the scheduler and hands a worker its next task when the worker is
# free; its default saturation (1.1) hands a one-thread worker two at once, so a task can wait
# behind a long one while another worker sits idle (docs/data.md; the data bench measures it).
# The first tasks of a map (up to twice the cluster's threads) are handed out at once all the
# same.
SCHEDULER_CONFIG = {"distributed.scheduler.worker-saturation": 1.0}


class DaskSettingError(ConfigError):
    """A Dask address or worker count that cannot be used."""


def resolve_dask_address(address: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """Where the group tasks run: a scheduler address, ``local`` or ``none``; and why."""
    if address:
        chosen, source = address, "the run's dask_address"
    elif from_environ := current_settings(environ).dask_address:
        chosen, source = from_environ, f"${DASK_ADDRESS_ENV}"
    else:
        return "local", "the default"
    chosen = chosen.strip()
    if chosen not in ("local", NO_DASK) and not chosen.startswith(("tcp://", "tls://")):
        raise DaskSettingError(
            f"dask address {chosen!r} (from {source}) is not tcp://host:port, tls://host:port, "
            f"local or {NO_DASK}; give the scheduler's address as `dask scheduler` prints it"
        )
    return chosen, source


def check_reachable(address: str, timeout: float = 30.0) -> None:
    """Fail at once, in one line, unless a Dask scheduler answers at the address within
    ``timeout`` seconds. Dask itself would wait 30 s and end in a traceback where nothing
    listens, and wait forever on a port that accepts and says nothing, or on an HTTP server.
    """
    host, _, port = address.split("://", 1)[1].rpartition(":")
    try:  # a refused port is known at once; Dask would retry it for the whole timeout
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise _not_a_scheduler(address, f"{type(err).__name__}: {err}") from None
    answer: dict[str, Any] = {}
    probe = threading.Thread(target=lambda: answer.update(_ask_identity(address, timeout)))
    probe.daemon = True  # a probe that Dask cannot stop must not keep the run alive
    probe.start()
    probe.join(timeout + 5)
    identity = answer.get("identity")
    kind = identity.get("type") if isinstance(identity, dict) else None
    if kind == "Scheduler":
        return
    why = answer.get("error") or (
        f"it answered as {kind!r}, not a scheduler" if kind else f"no answer in {timeout:g} s"
    )
    raise _not_a_scheduler(address, why)


def _not_a_scheduler(address: str, why: str) -> DaskSettingError:
    return DaskSettingError(
        f"no Dask scheduler answers at {address} ({why}); start one (`dask scheduler`), fix "
        f"dask_address or ${DASK_ADDRESS_ENV}, or use local or {NO_DASK}"
    )


def _ask_identity(address: str, timeout: float) -> dict[str, Any]:
    """The ``identity`` a Dask server at ``address`` gives, or the error in words."""
    from distributed.comm import connect

    async def ask() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        return {"identity": asyncio.run(asyncio.wait_for(ask(), timeout))}
    except TimeoutError:
        return {"error": f"no answer in {timeout:g} s"}
    except Exception as err:  # whatever Dask raises for a peer that is not Dask
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def local_workers(environ: Mapping[str, str]) -> int:
    """Worker processes of the local cluster: ``$CODEPARROT_DASK_WORKERS``, else one per core."""
    return current_settings(environ).dask_workers or os.cpu_count() or 1


def data_task_runner(address: str, environ: Mapping[str, str]):
    """The task runner for the group tasks, and a line that says where they run."""
    if address == NO_DASK:
        return ThreadPoolTaskRunner(), "in this process (no Dask)"
    if address != "local":
        check_reachable(address)
        return DaskTaskRunner(address=address), f"on the Dask cluster at {address}"
    workers = local_workers(environ)
    where = f"on a local Dask cluster of {workers} worker process(es)"
    return DaskTaskRunner(cluster_kwargs=local_cluster_settings(workers)), where


def local_cluster_settings(workers: int) -> dict[str, Any]:
    """``distributed.LocalCluster`` settings: worker processes of one thread each (the tasks
    are CPU-bound Python), on 127.0.0.1, no dashboard."""
    from prefect.settings import get_current_settings

    # The workers report to this run's Prefect API, also when it is a temporary server that
    # only this process's settings (not its environment) know of.
    env = get_current_settings().to_environment_variables(exclude_unset=True)
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "env": {
            **{k: v for k, v in env.items() if k.startswith("PREFECT_")},
            **ONE_CORE_PER_WORKER,
        },
    }


class DataConfig(BaseModel):
    """The settings of the data stages."""

    corpus: CorpusConfig
    filter: FilterConfig
    tokenizer: TokenizerConfig
    tokenize: TokenizeConfig


class OneLineFailuresOnWorkers(WorkerPlugin):
    """Gives each Dask worker (also one that joins or restarts later) the flows' one-line
    failures, so a group task's clear error is one line in its log there too."""

    def setup(self, worker) -> None:
        """Install the log filter in the worker's process."""
        install_one_line_failures()


def prepare_workers() -> None:
    """Register the worker plugin with this flow run's Dask cluster, if it runs on one."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if isinstance(runner, DaskTaskRunner) and runner.client is not None:
        runner.client.register_plugin(OneLineFailuresOnWorkers(), name="codeparrot-failures")


def build_missing(
    store: Store,
    specs: list[StageSpec],
    costs: list[float],
    submit: Callable[[list[int]], list[PrefectFuture]],
) -> list[StageRef]:
    """The committed output of each spec, in order: those found in the store at once, the rest
    from the tasks that ``submit`` maps over their indexes. A group that did not change costs
    no task run: a nightly run submits only the new and changed groups.

    The missing ones are submitted largest ``cost`` first (Dask runs tasks in the order they
    were submitted): a big group submitted last would leave every other worker idle while it
    runs. The outputs, and so the results, do not depend on this order."""
    log = get_run_logger()
    found = [find_committed(store, spec, log) for spec in specs]
    todo = sorted((i for i, ref in enumerate(found) if ref is None), key=lambda i: (-costs[i], i))
    for index, future in zip(todo, submit(todo) if todo else [], strict=True):
        found[index] = future.result()
    return found


def rebuilt(refs: list[StageRef]) -> int:
    """How many of the groups' outputs this run built (the rest were found in the store)."""
    return sum(not ref.reused for ref in refs)


@flow(name="codeparrot-ds-data")
def prepare_data(config: DataConfig, store_url: str) -> dict[str, Any]:
    """Snapshot the corpus, filter and tokenize each of its groups, dedup across them, train
    or load the tokenizer; return the references and how many groups were rebuilt."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    prepare_workers()
    store = open_store(store_url)
    corpus = stream_corpus(config.corpus, store_url)
    groups = read_groups(store, corpus)
    settings = read_settings(snapshot_config(store, corpus))
    group_documents = build_missing(
        store,
        [filter_spec(settings, group, config.filter) for group in groups],
        [group["bytes"] for group in groups],
        lambda todo: filter_group.map(
            unmapped(corpus),
            [groups[i] for i in todo],
            unmapped(config.filter),
            unmapped(store_url),
        ),
    )
    documents = deduplicate_groups(group_documents, config.filter, store_url)
    tokenizer = train_tokenizer(documents, config.tokenizer, store_url)
    drops = drop_digests(store, documents)
    # A group that kept no file has no tokens: no task, no member of the union.
    with_files = [group for group in group_documents if group.counts.get("kept")]
    group_tokens = build_missing(
        store,
        [
            tokenize_spec(group, tokenizer, config.tokenize, drops[group.prefix])
            for group in with_files
        ],
        [group.counts.get("bytes_kept", 0) for group in with_files],
        lambda todo: tokenize_group.map(
            [with_files[i] for i in todo],
            unmapped(documents),
            unmapped(tokenizer),
            unmapped(config.tokenize),
            unmapped(store_url),
        ),
    )
    tokens = join_token_groups(group_tokens, documents, tokenizer, config.tokenize, store_url)
    get_run_logger().info(
        "groups: %d; filtered in this run: %d; tokenized in this run: %d",
        len(groups),
        rebuilt(group_documents),
        rebuilt(group_tokens),
    )
    return {
        "corpus": corpus,
        "filter": documents,
        "tokenizer": tokenizer,
        "tokenize": tokens,
        "by_group": {
            str(group.get("label") or group["name"]): ref.counts
            for group, ref in zip(groups, group_documents, strict=True)
        },
        "groups": {
            "groups": len(groups),
            "filtered": rebuilt(group_documents),
            "tokenized": rebuilt(group_tokens),
        },
    }


def run_data_stages(
    config: DataConfig, store_url: str, dask_address: str | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Run the data flow on the task runner that the address (or environment) chooses."""
    address, source = resolve_dask_address(dask_address, environ)
    runner, where = data_task_runner(address, environ)
    stage_logger().info("data: the group tasks run %s (from %s)", where, source)
    # The scheduler's settings are read when the local cluster's scheduler starts.
    with dask.config.set(SCHEDULER_CONFIG), dask_worker_variables_kept_out():
        return prepare_data.with_options(task_runner=runner)(config, store_url)


@contextmanager
def dask_worker_variables_kept_out() -> Iterator[None]:
    """Put back what Dask's nanny sets in this process's own environment when it starts a
    worker (its pre-spawn variables: OMP_NUM_THREADS=1 and others). Otherwise every process
    started after the data flow (launched training, the test runners) runs on one thread."""
    names = list(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
