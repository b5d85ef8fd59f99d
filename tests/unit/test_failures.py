"""A failure is one clear line in the run's log; Prefect's tracebacks of it go to debug."""

from __future__ import annotations

import logging

import pytest

from flows.failures import OneLineFailures
from storage.errors import RunFailure
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


# Raised and caught inside one module, never shown to a user.
INTERNAL_ERRORS = {"tasks.corpus.notebooks.NotebookError"}


def _project_errors():
    import importlib
    import inspect
    import pkgutil

    for package in ("storage", "tasks", "flows"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for _, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, BaseException) and value.__module__ == info.name:
                    yield value


def test_every_error_a_user_can_meet_is_of_the_family_the_cli_and_the_log_filter_know():
    from flows.failures import CLEAR_ERRORS

    errors = {f"{e.__module__}.{e.__qualname__}": e for e in _project_errors()}
    assert "tasks.evaluate.sandbox.SandboxError" in errors  # once missing from a hand-kept list
    outside = sorted(
        name
        for name, error in errors.items()
        if not issubclass(error, CLEAR_ERRORS) and name not in INTERNAL_ERRORS
    )
    assert outside == []


def test_a_sandbox_error_is_one_line(engine_log):
    from tasks.evaluate.sandbox import SandboxError

    logger, records = engine_log
    error = _raise(SandboxError("no network namespace; run where unshare(CLONE_NEWNET) works"))
    logger.error("Task run failed with exception: %r", error, exc_info=error)
    [shown] = [r for r in records if r.levelno >= logging.ERROR]
    assert shown.exc_info is None and shown.getMessage().endswith("(SandboxError)")


def test_a_temporary_server_that_starts_slowly_is_waited_for_then_one_line(monkeypatch):
    from prefect.server.api import server
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import SERVER_START_S, ServerStartError, prefect_server

    waited = []

    def start(self, timeout=None):
        waited.append(timeout)
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(server.SubprocessASGIServer, "start", start)
    # No server configured (another test's session server may be), so a run starts its own.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not PREFECT_API_URL.value()
        expected = pytest.raises(ServerStartError, match=f"did not answer within {SERVER_START_S}")
        with expected, prefect_server():
            pass
    assert waited == [SERVER_START_S] and SERVER_START_S >= 180
    assert issubclass(ServerStartError, RunFailure)  # the CLI's one line, exit 1
