"""Flow runs on a real Prefect server, as tests read them: wait for one, its logs, its children."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from uuid import UUID

import psutil
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.client.schemas.sorting import LogSort


def wait_for_run(
    client: SyncPrefectClient, run_id: UUID, logs_root: Path, timeout: float
) -> FlowRun:
    """The run once it is in a final state; a failure with the workers' logs (``worker-*.log``
    under ``logs_root``) if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(logs_root.rglob("worker-*.log")))
    pytest.fail(f"flow run {run_id} did not finish in {timeout} s; worker logs:\n{logs}")


def run_logs(client: SyncPrefectClient, run_id: UUID) -> list[str]:
    """The messages of a run's log, oldest first."""
    found, page = [], 200  # the API's largest page
    logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    while batch := client.read_logs(
        logs, limit=page, offset=len(found), sort=LogSort.TIMESTAMP_ASC
    ):
        found += batch
    return [log.message for log in found]


def logs_once(
    client: SyncPrefectClient, run_id: UUID, ready: Callable[[list[str]], bool], timeout: float = 60
) -> list[str]:
    """A run's log once ``ready`` holds for it: log lines are shipped to the server in batches,
    so a run's last lines may arrive after it is Completed. The last read if it never holds."""
    deadline = time.monotonic() + timeout
    while not ready(logs := run_logs(client, run_id)) and time.monotonic() < deadline:
        time.sleep(1)
    return logs


def child_runs(client: SyncPrefectClient, run_id: UUID) -> list[FlowRun]:
    """The flow runs that a run started on a deployment (the training run of a pipeline run),
    not its subflows that ran in its own process (the data stages)."""
    return [run for run in all_child_runs(client, run_id) if run.deployment_id is not None]


def all_child_runs(client: SyncPrefectClient, run_id: UUID) -> list[FlowRun]:
    """Every flow run started from a run: on deployments, and its subflows."""
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        )
    )


def task_runs_within(client: SyncPrefectClient, run_id: UUID) -> list[TaskRun]:
    """The task runs of a run and of its subflows (the data stages' tasks)."""
    runs = [run_id, *(child.id for child in all_child_runs(client, run_id))]
    found, page = [], 200  # the API's largest page
    flows = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=runs))
    while batch := client.read_task_runs(task_run_filter=flows, limit=page, offset=len(found)):
        found += batch
    return found


def run_processes(run_ids: Iterable[UUID]) -> list[str]:
    """The processes alive now for these flow runs: a worker starts each run's process with
    ``PREFECT__FLOW_RUN_ID`` in its environment, and every process that one starts (training,
    Dask workers) inherits it."""
    wanted = {str(run_id) for run_id in run_ids}
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or not ours to read
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("PREFECT__FLOW_RUN_ID") in wanted:
                found.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
    return found


def processes_left(run_ids: Iterable[UUID], timeout: float = 60) -> list[str]:
    """``run_processes``, once it is empty or ``timeout`` seconds have passed."""
    run_ids = list(run_ids)
    deadline = time.monotonic() + timeout
    while (left := run_processes(run_ids)) and time.monotonic() < deadline:
        time.sleep(1)
    return left
