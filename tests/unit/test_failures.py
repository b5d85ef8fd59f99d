"""A failure is one clear line in the run's log; Prefect's tracebacks of it go to debug."""

from __future__ import annotations

import logging

import pytest

from flows.failures import OneLineFailures
from tasks.corpus.build import CorpusError


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def engine_log():
    logger = logging.getLogger("tests.engine")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Records()
    logger.addHandler(handler)
    logger.addFilter(OneLineFailures())
    yield logger, handler.records
    logger.handlers.clear()
    logger.filters.clear()


def _raise(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_a_clear_error_is_shown_once_on_one_line(engine_log):
    logger, records = engine_log
    error = _raise(CorpusError("no Python files under /nope; point corpus.roots at a folder"))
    logger.error("Task run failed with exception: %r", error, exc_info=error)
    logger.exception("Encountered exception during execution: %r", error, exc_info=error)
    shown = [r for r in records if r.levelno >= logging.ERROR]
    assert len(shown) == 1
    assert shown[0].getMessage() == (
        "failed: no Python files under /nope; point corpus.roots at a folder (CorpusError)"
    )
    assert shown[0].exc_info is None
    debug = [r for r in records if r.levelno == logging.DEBUG]
    assert len(debug) == 2 and all(r.exc_info for r in debug)


def test_other_exceptions_keep_their_traceback(engine_log):
    logger, records = engine_log
    error = _raise(KeyError("bug"))
    logger.error("Task run failed with exception: %r", error, exc_info=error)
    [record] = records
    assert record.exc_info is not None and "KeyError" in record.getMessage()
