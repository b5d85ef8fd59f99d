"""A `codeparrot-ds run` stopped with SIGTERM or Ctrl-C leaves no process behind and a run
state that says so, also on a machine loaded by other work."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.flows.test_pipeline import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _states(prefect_home: Path) -> dict[str, set[str]]:
    """The state types the temporary server recorded for flow runs and task runs."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return {
            table: {state for (state,) in db.execute(f"SELECT state_type FROM {table}")}
            for table in ("flow_run", "task_run")
        }


@pytest.mark.parametrize("how", ["SIGTERM", "SIGTERM to the group", "Ctrl-C", "SIGKILL"])
def test_an_interrupted_run_stops_its_temporary_prefect_server(corpus_dir, tmp_path, how, cpu_hogs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = [sys.executable, "-m", "flows.cli", "run", "--store", str(tmp_path / "store")]
    # Many epochs: training outlasts the signal, which must land mid-stage.
    for item in (
        f"corpus.roots=[{corpus_dir}]",
        *TINY,
        "train.epochs=10000",
        "train.max_steps=100000",
    ):
        command += ["--set", item]
    run = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        # A terminal's job takes Ctrl-C; a test runner started in the background may have
        # SIGINT ignored, which its children would inherit.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    parent = psutil.Process(run.pid)
    deadline = time.monotonic() + 900  # the hogs halve what the run gets of the machine
    # Wait until the temporary server is up and training has started.
    while not (tmp_path / "store" / "train").exists():
        assert run.poll() is None, run.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    children = parent.children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children), children
    if how == "SIGTERM":
        run.send_signal(signal.SIGTERM)  # to the command alone, as `kill` does
    elif how == "SIGTERM to the group":
        os.killpg(run.pid, signal.SIGTERM)  # as `timeout` or a service manager does
    elif how == "SIGKILL":
        run.kill()  # the command alone: its server must not be orphaned
    else:
        os.killpg(run.pid, signal.SIGINT)  # to the whole foreground group, as a terminal does
    output = run.communicate(timeout=300)[0].decode()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    if how == "SIGKILL":
        assert run.returncode == -signal.SIGKILL
        return  # a killed process records nothing: the next run's stages resume
    signum = signal.SIGINT if how == "Ctrl-C" else signal.SIGTERM
    assert run.returncode == 128 + signum, output[-3000:]
    # The server recorded how the run ended before it stopped: nothing is left "running".
    states = _states(tmp_path / "prefect")
    assert "CRASHED" in states["flow_run"], states
    assert not {"RUNNING", "PENDING"} & (states["flow_run"] | states["task_run"]), states
