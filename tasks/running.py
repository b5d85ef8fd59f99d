"""The Prefect side every stage's task shares: its logger, its retry rule, the run's store.

The store's manifests are the only cache: a stage finds its committed output by its key, so
Prefect caches nothing and no Prefect result record (a pickle) is ever written or read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from storage.settings import MAX_IO_RETRIES, current_settings
from storage.stages import StageRef, StageSpec, StageWriter, run_stage
from storage.store import (
    NOT_TRANSIENT_ERRNOS,
    Store,
    StoreError,
    default_store_url,
    normalize_store_url,
)
from tasks.credentials import block_credentials
from tasks.stage import Stage


class CurrentRetryDelays(Sequence[float]):
    """The retry delays of the settings in force when Prefect asks for one (not at import):
    a task may take up to ``MAX_IO_RETRIES``, and ``retry_on_io_error`` stops it after as many
    as ``$CODEPARROT_IO_RETRY_DELAYS`` lists."""

    def __getitem__(self, index):
        return (current_settings().io_retry_delays or [0.0])[index]

    def __len__(self) -> int:
        return max(1, len(current_settings().io_retry_delays))


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run (so the UI shows the lines), a plain logger outside."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("codeparrot_ds")


def current_flow_run() -> str:
    """This flow run as "flow run NAME (ID)", for the manifests it commits; "" outside one."""
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name} ({flow_run.id})" if flow_run.id else ""


def is_transient(error: BaseException) -> bool:
    """Whether retrying can help: I/O faults yes; refusals, missing objects, damage, a full or
    read-only disk and user errors no."""
    if isinstance(error, PermissionError | FileNotFoundError | StoreError):
        return False
    if isinstance(error, OSError):
        return error.errno not in NOT_TRANSIENT_ERRNOS
    return False


def retry_on_io_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry only transient I/O errors (storage, network), as many
    times as ``$CODEPARROT_IO_RETRY_DELAYS`` has delays."""
    if task_run.run_count > len(current_settings().io_retry_delays):
        return False
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - classified, not handled
        return is_transient(err)
    return False


def open_store(store_url: str) -> Store:
    """The store at ``store_url``, with the S3 keys of the Prefect block that
    ``$CODEPARROT_S3_CREDENTIALS_BLOCK`` names (loaded once per process), if any."""
    url = normalize_store_url(store_url)
    return Store(url, None if url.startswith("file://") else block_credentials())


def open_run_store(store_url: str | None) -> str:
    """Check that a run can use its store; return the store's URL.

    None means this process's default store, so a worker's environment can choose it.
    """
    url = normalize_store_url(store_url or default_store_url())
    open_store(url).check_access()
    return url


def stage_task(stage: Stage, group: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Make a function the stage's Prefect task, named ``{stage}`` (or ``{stage}-group`` for
    its per-group task): never cached by Prefect (the store is the cache), I/O faults retried
    with backoff."""
    return task(
        name=f"{stage.name}-group" if group else stage.name,
        cache_policy=NONE,
        retries=MAX_IO_RETRIES,
        retry_delay_seconds=lambda _retries: CurrentRetryDelays(),
        retry_jitter_factor=0.2,
        retry_condition_fn=retry_on_io_error,
    )


def commit_stage(
    stage: Stage,
    store_url: str,
    spec: StageSpec,
    build: Callable[[StageWriter], dict[str, Any]],
    log: logging.Logger | logging.LoggerAdapter,
) -> StageRef:
    """Find the committed output of ``spec``, or build and commit it, recording the flow run."""
    ref = run_stage(open_store(store_url), spec, build, log, current_flow_run())
    log.info("%s: %s", stage.name, ref.counts)
    return ref
