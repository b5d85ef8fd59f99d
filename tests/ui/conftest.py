"""The real stack (Prefect server, SeaweedFS, work pools, workers, deployments) on 127.0.0.1,
and Debian's chromium driven by Playwright: no browser is downloaded."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient

from deployments import stack
from deployments.seaweedfs import free_ports
from tests.corpus_maker import make_corpus

CHROMIUM = os.environ.get("CODEPARROT_CHROMIUM", "/usr/bin/chromium")
# As the environment notes say: headless, no sandbox (root), and none of the background
# connections that a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class UiStack:
    """A running stack: where its UI is, an API client, its shell settings, a corpus."""

    url: str
    client: SyncPrefectClient
    env: dict[str, str]
    corpus: Path
    root: Path


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory) -> Iterator[UiStack]:
    """``make stack-up``'s stack in a temporary folder, with a small corpus beside it.

    The package index is a closed port, so a ``ds`` run (the nightly's preset) stops at its
    corpus stage within seconds instead of reading the internet; the scheduler looks for due
    schedules every 5 s instead of 60, and the group tasks run without Dask.
    """
    root = tmp_path_factory.mktemp("ui-stack")
    corpus = make_corpus(root / "corpus", files=400)
    port = free_ports(1)[0]
    settings = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "CODEPARROT_CACHE_DIR": str(root / "cache"),
        "CODEPARROT_IO_RETRY_DELAYS": "1",
        # The group tasks in the flow run's process: these tests are about the UI, and
        # tests/dask and tests/integration run them on Dask clusters.
        "CODEPARROT_DASK_ADDRESS": "none",
    }
    env = stack.up(port, root=root / "stack", settings=settings)
    try:
        with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
            yield UiStack(f"http://127.0.0.1:{port}", client, env, corpus, root)
    finally:
        stack.down(purge=False, root=root / "stack")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright."""
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: `make test` installs Debian's package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser):
    """A fresh browser context and its page of 1400 × 1000 pixels."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    return context, page


@pytest.fixture
def page(browser):
    """A fresh page of 1400 × 1000 pixels."""
    context, page = new_page(browser)
    yield page
    context.close()
