"""What every stage's Prefect wrapper shares: its logger and its retry rule."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

# Transient storage and network faults are worth a retry; a bad config or empty corpus is not.
IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30]}


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a run (so the UI shows the lines), a plain logger outside."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("codeparrot_ds")


def retry_on_io_error(task, task_run, state) -> bool:
    """Retry condition: only I/O errors (storage, network) are retried."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False
