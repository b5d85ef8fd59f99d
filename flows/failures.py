"""One clear line per failure in a run's logs; Prefect's tracebacks for it at debug level.

Prefect logs a failing task's exception with its traceback, then the flow's, then the
engine's: three tracebacks of about 60 lines around a message that already says what was
wrong and what to do. For the error family of ``storage.errors``, written for the user, the
first record becomes that message on one line and the rest go to debug level; other exceptions
(bugs) keep their tracebacks.
"""

from __future__ import annotations

import logging
from collections import deque

from storage.errors import RunFailure, UserError

# Errors whose message says what was wrong and what to do: in the user's input or setup, or
# outside it (the store may come back, a better model may come next night, a training run on
# another worker failed and its own log says why).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)
RUN_ERRORS: tuple[type[BaseException], ...] = (RunFailure,)
CLEAR_ERRORS = USER_ERRORS + RUN_ERRORS
# The loggers of Prefect's run engines, whose records reach the UI.
ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def clear_line(error: BaseException) -> str:
    """The one line a failure is shown as: the error's kind and its message."""
    message = " ".join(str(error).split())
    return f"failed: {message} ({type(error).__name__})"


class OneLineFailures(logging.Filter):
    """Rewrites engine error records of clear errors: in each flow run's log the first as one
    line, the rest dropped; each one's traceback is logged again at debug level.

    A failure is recognised by its line, not by the exception object: a task that failed on
    a Dask worker comes back to the flow as a copy.
    """

    def __init__(self) -> None:
        super().__init__()
        # The (flow run, line) pairs already shown; a few are enough, since the records of
        # one failure come one after another.
        self.reported: deque[tuple[str, str]] = deque(maxlen=16)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep, rewrite or drop one record."""
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(error, CLEAR_ERRORS):
            return True
        logger = logging.getLogger(record.name)
        logger.debug("traceback of: %s", record.getMessage(), exc_info=record.exc_info)
        shown = (str(getattr(record, "flow_run_id", "")), clear_line(error))
        if shown in self.reported:
            return False
        self.reported.append(shown)
        record.msg, record.args = shown[1], ()
        record.exc_info, record.exc_text = None, None
        return True


_FILTER = OneLineFailures()


def install_one_line_failures() -> None:
    """Put the filter on Prefect's engine loggers (once per process)."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
