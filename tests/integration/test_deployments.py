"""The deployments on a real Prefect server: deployed from deployments/prefect.yaml, run by
process workers of the ``cpu`` and ``gpu`` pools, checked through the server's API."""

from __future__ import annotations

import time
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from deployments.seaweedfs import HOST, free_ports
from deployments.stack import (
    WORK_POOLS,
    create_work_pools,
    deploy,
    prefect_environment,
    start_prefect_server,
    start_worker,
    stop_group,
)
from flows.artifacts import (
    API_CURVE_KEY,
    DATA_REPORT_KEY,
    LOSS_CURVE_KEY,
    METRICS_KEY,
    MODEL_KEY,
    SAMPLES_KEY,
)
from tasks.registry import STAGES
from tasks.train.build import training_request
from tasks.train.progress import PROGRESS_KEY
from tests.flows.test_pipeline import _config
from tests.prefect_runs import child_runs, logs_once, run_logs, task_runs_within, wait_for_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RUN_TIMEOUT = 420


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Prefect server with the deployments and a worker per pool; stores in a temp folder."""
    root = tmp_path_factory.mktemp("stack")
    port = free_ports(1)[0]
    api_url = f"http://{HOST}:{port}/api"
    server = start_prefect_server(root / "home", port, root / "server.log")
    env = {
        **prefect_environment(root / "home", api_url),
        "CODEPARROT_STORE": str(root / "store"),
        "CODEPARROT_CACHE_DIR": str(root / "cache"),
    }
    workers = []
    try:
        create_work_pools(env)
        deploy(env)
        workers = [start_worker(p, env, root / f"worker-{p}.log") for p in WORK_POOLS]
        with SyncPrefectClient(api_url) as client:
            yield client, root
    finally:
        for process in [*workers, server]:
            stop_group(process.pid)


def _start(client: SyncPrefectClient, deployment: str, parameters: dict) -> UUID:
    found = client.read_deployment_by_name(deployment)
    return client.create_flow_run_from_deployment(found.id, parameters=parameters).id


def test_pipeline_deployment_runs_on_workers_and_reports_to_the_ui(stack, corpus_dir):
    client, root = stack
    config = _config(corpus_dir)
    # A null route, as the UI stores after a schedule edit: the deployment's default route.
    parameters = {
        "preset": "custom",
        "config": config.model_dump(mode="json"),
        "training_deployment": None,
    }
    run_id = _start(client, "codeparrot-ds-pipeline/on-demand", parameters)
    run = wait_for_run(client, run_id, root, RUN_TIMEOUT)
    assert run.state.is_completed(), run.state.message

    task_runs = task_runs_within(client, run_id)  # the data stages run as a subflow
    names = {t.name.rsplit("-", 1)[0] for t in task_runs}
    # Every stage's tasks ran, each named after its stage (training on the gpu pool's
    # deployment is the train task too).
    assert {name for stage in STAGES for name in stage.task_names} <= names
    assert all(t.state.is_completed() for t in task_runs)
    committed = lambda logs: any("tokens:" in m or "committed" in m for m in logs)  # noqa: E731
    pipeline_logs = logs_once(client, run_id, committed)
    assert committed(pipeline_logs), pipeline_logs[-20:]
    assert (
        "training runs on the deployment codeparrot-ds-train/gpu (from "
        "$CODEPARROT_TRAINING_DEPLOYMENT, the deployment's default route)"
    ) in pipeline_logs

    # Training ran as its own flow run on the gpu pool, a child of the pipeline's run, and its
    # progress lines reached the UI; the pipeline's log names it.
    children = child_runs(client, run_id)
    assert [c.work_pool_name for c in children] == ["gpu"]
    assert children[0].state.is_completed()
    assert any(f"training run {children[0].name!r} started" in m for m in pipeline_logs)
    training_logs = run_logs(client, children[0].id)
    steps = config.train.max_steps
    assert any(f"step {steps}/{steps}" in m and "tok/s" in m for m in training_logs)

    keys = [
        DATA_REPORT_KEY,
        PROGRESS_KEY,
        LOSS_CURVE_KEY,
        API_CURVE_KEY,
        METRICS_KEY,
        SAMPLES_KEY,
        MODEL_KEY,
    ]
    artifacts = {
        a.key: a
        for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id, children[0].id])),
        )
    }
    assert sorted(artifacts) == sorted(keys)
    assert artifacts[PROGRESS_KEY].data == 100.0
    assert "kept" in artifacts[DATA_REPORT_KEY].data
    assert "](data:image/svg+xml;base64," in artifacts[LOSS_CURVE_KEY].data
    assert "](data:image/svg+xml;base64," in artifacts[API_CURVE_KEY].data
    assert "perplexity" in str(artifacts[METRICS_KEY].data)
    assert "# create scatter plot with x, y" in artifacts[SAMPLES_KEY].data
    assert "/publish/codeparrot-ds/" in artifacts[MODEL_KEY].data

    nightly = client.read_deployment_by_name("codeparrot-ds-pipeline/nightly")
    [schedule] = nightly.schedules
    assert schedule.active
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "UTC"
    assert nightly.work_pool_name == "cpu"


def test_a_second_training_run_waits_for_the_first(stack, session_store, tokens_ref, tokenizer_ref):
    client, root = stack
    config = _config("unused")
    runs = [
        _start(
            client,
            "codeparrot-ds-train/gpu",
            training_request(
                tokens_ref,
                tokenizer_ref,
                config.model,
                config.train.model_copy(update={"seed": seed}),
                session_store.url,
            ),
        )
        for seed in (1, 2)
    ]
    seen: dict[UUID, set[str]] = {run: set() for run in runs}
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        states = {run: client.read_flow_run(run).state for run in runs}
        for run, state in states.items():
            seen[run].add(state.name)
        if all(state.is_final() for state in states.values()):
            break
        time.sleep(0.5)
    first, second = sorted((client.read_flow_run(r) for r in runs), key=lambda r: r.start_time)
    assert first.state.is_completed() and second.state.is_completed()
    assert second.start_time >= first.end_time
    assert "AwaitingConcurrencySlot" in seen[second.id]


def test_a_failed_stage_is_shown_with_what_to_do(stack, tmp_path):
    client, root = stack
    empty = tmp_path / "no-python-here"
    empty.mkdir()
    # Null preset and route, as a schedule's parameter overrides may store them: the
    # deployment's preset (smoke) and its default route.
    parameters = {
        "preset": None,
        "overrides": {"corpus.roots": [str(empty)]},
        "training_deployment": None,
    }
    run_id = _start(client, "codeparrot-ds-pipeline/on-demand", parameters)
    run = wait_for_run(client, run_id, root, RUN_TIMEOUT)
    assert run.state.is_failed()
    task_runs = task_runs_within(client, run_id)
    failed = {t.name.rsplit("-", 1)[0] for t in task_runs if t.state.is_failed()}
    assert failed == {"corpus", "codeparrot-ds-data"}  # the task, and its subflow
    # The failure's line is among the last shipped: it may reach the server after the state.
    logs = logs_once(client, run_id, lambda ms: any(m.startswith("failed: ") for m in ms))
    assert (
        f'settings: preset smoke (the run\'s preset was empty); overrides: corpus.roots=["{empty}"]'
    ) in logs
    # One clear line for the failure; Prefect's tracebacks of it are at debug level.
    errors = [m for m in logs if m.startswith("failed: ")]
    assert len(errors) == 1 and "point corpus.roots at a folder of Python code" in errors[0]
    assert not any("Traceback" in m for m in logs)
