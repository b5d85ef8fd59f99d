"""What every stage's Prefect wrapper shares: its logger, retry rule and result caching."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from storage.results import RESULT_STORAGE_REF, stage_cache_key
from storage.stages import StageSpec

# Seconds between a stage's attempts after an I/O fault; one retry per entry. The default rides
# out a store that is down for a few minutes; tests set it short.
RETRY_DELAYS_ENV = "CODEPARROT_IO_RETRY_DELAYS"
DEFAULT_RETRY_DELAYS = "5,30,120"


def retry_delays() -> list[float]:
    """The retry delays from ``$CODEPARROT_IO_RETRY_DELAYS`` (comma-separated seconds)."""
    text = os.environ.get(RETRY_DELAYS_ENV, DEFAULT_RETRY_DELAYS)
    try:
        delays = [float(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ValueError(
            f"{RETRY_DELAYS_ENV}={text!r} is invalid; give comma-separated seconds like 5,30,120"
        ) from None
    return delays


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run (so the UI shows the lines), a plain logger outside."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("codeparrot_ds")


def retry_on_io_error(task, task_run, state) -> bool:
    """Retry condition: only transient I/O errors (storage, network) are retried.

    Refused access and missing objects are not transient: retrying them only delays the error.
    """
    try:
        state.result()
    except (PermissionError, FileNotFoundError):
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


def stage_task(
    name: str, spec_of: Callable[..., StageSpec] | None, retries: bool = True
) -> Callable[[Callable[..., Any]], Any]:
    """Make a stage function a Prefect task with the store as its result cache.

    ``spec_of`` maps the task's parameters to its stage spec; its result record then lives in
    the output's folder. Without one (the corpus snapshot, which must look at the source every
    time) the task is never cached by Prefect. ``retries`` retries I/O faults with backoff.
    """
    options: dict[str, Any] = {"name": name}
    if spec_of is None:
        options["cache_policy"] = NONE
    else:
        options.update(
            cache_key_fn=stage_cache_key(spec_of),
            result_storage=RESULT_STORAGE_REF,
            persist_result=True,
        )
    if retries:
        delays = retry_delays()
        options.update(
            retries=len(delays),
            retry_delay_seconds=delays,
            retry_jitter_factor=0.2,
            retry_condition_fn=retry_on_io_error,
        )
    return task(**options)
