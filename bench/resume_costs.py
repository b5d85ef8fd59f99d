"""What safety costs and saves, measured on the smoke preset against a local folder and S3.

Starts a SeaweedFS S3 server on free 127.0.0.1 ports, then runs the ``codeparrot-ds`` command:

1. the smoke pipeline from nothing on S3, and again when it is finished (rerun time), with the
   same two runs on a local folder as the baseline;
2. training with another seed on S3, SIGKILLed a little past a checkpoint, then rerun: the
   steps and seconds lost against the uninterrupted run's step time;
3. checkpoint overhead: the seconds spent saving checkpoints as a share of training time.

    python bench/resume_costs.py [--kill-after-step 250] [--stores local,s3]
                                 [--set section.field=value ...]

``--set`` is passed to every run (the test suite runs this bench on a few steps with it, on S3
only). The kill and rerun of step 2 always use S3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deployments.seaweedfs import SeaweedFS
from storage.stages import CHECKPOINTS_DIR
from storage.store import Store

STEP_LINE = re.compile(r"step (\d+)/(\d+) ")


def run_cli(store_url: str, env: dict, *overrides: str) -> tuple[float, str]:
    """Run the smoke pipeline; return wall seconds and its output."""
    args = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--store", store_url]
    for item in overrides:
        args += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def training_counts(store: Store) -> dict:
    """The counts of the newest committed training output in a store."""
    manifests = [f for f in store.list_files("train") if f.endswith("_manifest.json")]
    newest = max(manifests, key=lambda f: store.read_json(f"train/{f}")["created_at"])
    return store.read_json(f"train/{newest}")["counts"]


def kill_training(store_url: str, env: dict, kill_after: int, *overrides: str) -> dict:
    """Start a run, SIGKILL it once training logged ``kill_after``; rerun; report the loss."""
    args = [sys.executable, "-m", "flows.cli", "run", "--preset", "smoke", "--store", store_url]
    for item in overrides:
        args += ["--set", item]
    # Its own process group, killed whole as a crashed machine would be: the run's temporary
    # Prefect server with it, so nothing is left behind.
    child = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reached = 0
    for line in child.stdout:
        if match := STEP_LINE.search(line):
            reached = int(match.group(1))
            if reached >= kill_after:
                os.killpg(child.pid, signal.SIGKILL)
                break
    child.wait()
    seconds, _ = run_cli(store_url, env, *overrides)
    counts = training_counts(Store(store_url))
    return {"killed_at_step": reached, "rerun_seconds": seconds, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-after-step", type=int, default=250)
    parser.add_argument(
        "--stores",
        default="local,s3",
        help="which stores step 1 measures, comma-separated: local (the baseline), s3",
    )
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="SECTION.FIELD=VALUE"
    )
    args = parser.parse_args()
    chosen = args.stores.split(",")
    if not set(chosen) <= {"local", "s3"}:
        parser.error("--stores takes a comma-separated list of local and s3")
    work = Path(tempfile.mkdtemp(prefix="resume-costs-"))
    stores = {"local": str(work / "store"), "s3": "s3://bench/store"}
    server = SeaweedFS(work / "seaweedfs", "bench", secrets.token_hex(16))
    server.start()
    try:
        env = {**os.environ, **server.environment(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env["CODEPARROT_CACHE_DIR"] = str(work / "cache")
        os.environ.update(server.environment())
        Store("s3://bench").fs.mkdir("bench")
        figures = {}
        for name in chosen:
            url = stores[name]
            first, _ = run_cli(url, env, *args.overrides)
            rerun, _ = run_cli(url, env, *args.overrides)
            counts = training_counts(Store(url))
            figures[name] = {"first_run_s": round(first, 1), "rerun_s": round(rerun, 1)}
            figures[name]["checkpoint_share"] = round(
                counts["checkpoint_seconds"] / counts["train_seconds"], 4
            )
            figures[name]["train_seconds"] = counts["train_seconds"]
            figures[name]["checkpoint_seconds"] = counts["checkpoint_seconds"]
            figures[name]["checkpoints"] = counts["checkpoints"]
            print(name, json.dumps(figures[name]), flush=True)

        # Another seed makes another model, which the quality gate may rightly refuse to
        # promote; this bench measures resuming, not promotion.
        killed = kill_training(
            "s3://bench/store",
            env,
            args.kill_after_step,
            *args.overrides,
            "train.seed=7",
            "publish.force=true",
        )
        step_seconds = killed["train_seconds"] / killed["steps"]
        lost_steps = killed["killed_at_step"] - killed["resumed_from_step"]
        print(
            "kill:",
            json.dumps(
                {
                    "killed_at_step": killed["killed_at_step"],
                    "resumed_from_step": killed["resumed_from_step"],
                    "lost_steps": lost_steps,
                    "lost_seconds": round(lost_steps * step_seconds, 1),
                    "step_seconds": round(step_seconds, 4),
                    "rerun_after_kill_s": round(killed["rerun_seconds"], 1),
                }
            ),
        )
        checkpoints = Store("s3://bench/store").list_files("train")
        kept = sorted({f.split("/")[2] for f in checkpoints if f"/{CHECKPOINTS_DIR}/" in f})
        print("checkpoints kept on S3 (last run):", kept)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
