"""A `codeparrot-ds run` stopped with SIGTERM or Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.flows.test_pipeline import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_an_interrupted_run_stops_its_temporary_prefect_server(corpus_dir, tmp_path, how):
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
    deadline = time.monotonic() + 180
    # Wait until the temporary server is up and training has started.
    while not (tmp_path / "store" / "train").exists():
        assert run.poll() is None, run.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    children = parent.children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children), children
    if how == "SIGTERM":
        run.send_signal(signal.SIGTERM)  # to the command alone, as `kill` does
    else:
        os.killpg(run.pid, signal.SIGINT)  # to the whole foreground group, as a terminal does
    output = run.communicate(timeout=60)[0].decode()
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    assert run.returncode == 128 + signum, output[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
