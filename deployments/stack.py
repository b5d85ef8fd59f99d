"""A local stack for trying the deployments on one machine, all on 127.0.0.1.

``python -m deployments.stack up`` starts a Prefect server (SQLite under .stack/, analytics
off), a SeaweedFS S3 server with a bucket for the store, the ``cpu`` and ``gpu`` work pools
with a worker each, and deploys ``deployments/prefect.yaml``. ``down`` stops it all; the data
stays in .stack/ for the next ``up`` (``down --purge`` deletes it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deployments.seaweedfs import HOST, SeaweedFS
from storage.store import S3_CREDENTIALS_BLOCK_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = "deployments/prefect.yaml"
STACK_DIR = REPO_ROOT / ".stack"
BUCKET = "codeparrot-ds"
# The pipeline runs on ``cpu``; training on ``gpu``, whose deployment runs one at a time.
WORK_POOLS = ("cpu", "gpu")
# The Prefect block holding the local S3 server's keys: workers, and the "Try it" command of
# a run's model artifact, read the store with it and carry no secret in their environment.
CREDENTIALS_BLOCK = "codeparrot-ds-stack"
SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def prefect_environment(home: Path, api_url: str) -> dict[str, str]:
    """Settings for every Prefect process of a stack: its home, its server, no analytics."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": HOST,
        # Workers look for due runs every 2 s, so a run pressed in the UI starts at once.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        # A run waiting for the training deployment's slot tries again every 5 s (not 30 s).
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }


def start_detached(command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a process in its own session (it outlives this one), its output to a log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def prefect_command(*args: str) -> list[str]:
    """The ``prefect`` command line of this interpreter's environment."""
    return [sys.executable, "-m", "prefect", *args]


def run_prefect(env: dict[str, str], *args: str) -> str:
    """Run a ``prefect`` command against the stack's server; fail with its output."""
    done = subprocess.run(
        prefect_command(*args),
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def start_prefect_server(
    home: Path, port: int, log_path: Path, settings: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``prefect server start`` on 127.0.0.1 and wait until its API answers."""
    env = {**prefect_environment(home, f"http://{HOST}:{port}/api"), **(settings or {})}
    process = start_detached(
        prefect_command("server", "start", "--host", HOST, "--port", str(port)), log_path, env
    )
    wait_for_api(env["PREFECT_API_URL"], process, log_path)
    return process


def wait_for_api(api_url: str, process: subprocess.Popen, log_path: Path, timeout=180) -> None:
    """Wait until the server's health check answers; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the Prefect server exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the Prefect server did not answer on {api_url} in {timeout} s")


def create_work_pools(env: dict[str, str]) -> None:
    """The ``cpu`` and ``gpu`` process work pools (left as they are if they exist)."""
    existing = run_prefect(env, "work-pool", "ls")
    for pool in WORK_POOLS:
        if f" {pool} " not in existing:
            run_prefect(env, "work-pool", "create", pool, "--type", "process")


def deploy(env: dict[str, str]) -> None:
    """Deploy every deployment of ``deployments/prefect.yaml`` from the repository root."""
    run_prefect(env, "--no-prompt", "deploy", "--prefect-file", PREFECT_FILE, "--all")


def save_credentials_block(api_url: str, access_key: str, secret_key: str) -> None:
    """Save the S3 keys as the stack's credentials block on its Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.credentials import S3StoreCredentials

    with temporary_settings({PREFECT_API_URL: api_url}):
        S3StoreCredentials(access_key_id=access_key, secret_access_key=secret_key).save(
            CREDENTIALS_BLOCK, overwrite=True, _sync=True
        )


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """A worker's settings: the stack's, with the credentials block instead of the keys."""
    kept = {name: value for name, value in env.items() if name not in SECRET_VARIABLES}
    return {**kept, S3_CREDENTIALS_BLOCK_ENV: CREDENTIALS_BLOCK}


def start_worker(pool: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start a process worker for a pool."""
    args = ["worker", "start", "--pool", pool, "--name", f"local-{pool}", "--type", "process"]
    return start_detached(prefect_command(*args), log_path, env)


def stop_group(pid: int, timeout: float = 20.0) -> None:
    """Stop a process group started by ``start_detached``: TERM, then KILL after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def group_alive(pid: int) -> bool:
    """Whether any process of the group that ``pid`` leads is still running."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap the leader if it is our own finished child
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state_path(root: Path) -> Path:
    return root / "stack.json"


def up(port: int, root: Path = STACK_DIR, settings: dict[str, str] | None = None) -> dict:
    """Start the whole stack with its data under ``root``; print how to use it and return
    the shell settings that reach it. ``settings`` are extra environment for its processes."""
    state_path = _state_path(root)
    if state_path.exists():
        pids = json.loads(state_path.read_text())["pids"]
        if any(group_alive(pid) for pid in pids.values()):
            raise SystemExit(f"the stack is already up (see {state_path}); `make stack-down`")
        state_path.unlink()  # left by a stack whose processes are gone (a reboot)
    pids: dict[str, int] = {}
    state = {"pids": pids}
    logs = root / "logs"
    try:
        server = start_prefect_server(root / "prefect", port, logs / "prefect-server.log", settings)
        pids["prefect-server"] = server.pid
        state_path.write_text(json.dumps(state))
        seaweedfs = SeaweedFS(root / "seaweedfs", "codeparrot", secrets.token_hex(16))
        seaweedfs.start()
        pids["seaweedfs"] = seaweedfs.process.pid
        state_path.write_text(json.dumps(state))
        env = {
            **prefect_environment(root / "prefect", f"http://{HOST}:{port}/api"),
            **seaweedfs.environment(),
            "CODEPARROT_STORE": f"s3://{BUCKET}/store",
            **(settings or {}),
        }
        seaweedfs.create_bucket(BUCKET)
        save_credentials_block(env["PREFECT_API_URL"], seaweedfs.access_key, seaweedfs.secret_key)
        create_work_pools(env)
        deploy(env)
        for pool in WORK_POOLS:
            worker = start_worker(pool, worker_environment(env), logs / f"worker-{pool}.log")
            pids[f"worker-{pool}"] = worker.pid
        state_path.write_text(json.dumps(state))
    except BaseException:
        down(purge=False, root=root)
        raise
    env_file = root / "env.sh"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in sorted(env.items())))
    env_file.chmod(0o600)  # it holds the local S3 server's secret key
    shown = env_file.relative_to(REPO_ROOT) if env_file.is_relative_to(REPO_ROOT) else env_file
    print(f"""
The stack is up (logs in {logs}).
  Prefect UI:  http://{HOST}:{port}
  S3 store:    s3://{BUCKET}/store on {seaweedfs.endpoint}
  Run the pipeline: UI > Deployments > on-demand > Run > Custom run, keep the preset "smoke"
  (or choose another), add overrides such as {{"train.max_steps": 200}}, and press Submit.
  Or from a shell:
    source {shown} && \\
    .venv/bin/prefect deployment run codeparrot-ds-pipeline/on-demand -p preset=smoke
  Stop it with: make stack-down""")
    return env


def down(purge: bool, root: Path = STACK_DIR) -> None:
    """Stop every process of the stack under ``root``; with ``purge``, delete its data too."""
    state_path = _state_path(root)
    if state_path.exists():
        pids = json.loads(state_path.read_text())["pids"]
        # Workers first, so that no run starts while the servers go away.
        for name in sorted(pids, key=lambda n: not n.startswith("worker")):
            stop_group(pids[name])
            print(f"stopped {name}")
        state_path.unlink()
    else:
        print("no stack is up")
    if purge and root.exists():
        shutil.rmtree(root)
        print(f"deleted {root}")


def main(argv: list[str] | None = None) -> None:
    """``up`` or ``down`` the local stack."""
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the stack and deploy the flows")
    start.add_argument("--port", type=int, default=4200, help="Prefect server and UI port")
    stop = sub.add_parser("down", help="stop the stack")
    stop.add_argument("--purge", action="store_true", help="also delete .stack/ (runs, data)")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.port)
    else:
        down(args.purge)


if __name__ == "__main__":
    main()
