"""Multi-process training: one process per GPU through ``accelerate launch``.

The Prefect task launches the run and forwards every line the processes print to its own
logger, so the UI shows them; progress records travel as marked lines. The launched processes
need nothing but the store: they read the shards and write checkpoints and the model there.

Launched side: ``python -m tasks.train.launch REQUEST_JSON RESULT_JSON``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from storage.errors import RunFailure
from storage.stages import PartInfo, StageRef, StageWriter
from storage.store import Store
from tasks.train.build import train_from_shards, training_request
from tasks.train.config import ModelConfig, TrainConfig
from tasks.train.hooks import ProgressCallback
from tasks.train.loop import resolve_mixed_precision

# Marks a line that carries a progress record (JSON) rather than a log message.
PROGRESS_MARK = "@codeparrot-progress "


class TrainingLaunchError(RunFailure, RuntimeError):
    """The launched training processes failed."""


def rendezvous_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago, for the processes to meet on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(
    processes: int, mixed_precision: str, port: int, request: Path, result: Path
) -> list[str]:
    """The ``accelerate launch`` command line of a multi-process run of this module."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={processes}",
        "--num_machines=1",
        f"--mixed_precision={mixed_precision}",
        "--dynamo_backend=no",
        f"--main_process_port={port}",
        "-m",
        __name__,
        str(request),
        str(result),
    ]


class LevelPrefixFormatter(logging.Formatter):
    """Prefixes every line above INFO with its level, so the caller logs it at that level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


def forward_output(
    lines: Iterable[str], log: logging.Logger | logging.LoggerAdapter, on_progress
) -> None:
    """Log each output line of the launched run; hand progress lines to ``on_progress``."""
    for line in lines:
        line = line.rstrip("\n")
        level, _, message = line.partition(": ")
        if line.startswith(PROGRESS_MARK):
            if on_progress is not None:
                on_progress(json.loads(line[len(PROGRESS_MARK) :]))
        elif level in ("WARNING", "ERROR", "CRITICAL"):
            log.log(logging.getLevelName(level), "%s", message)
        elif line.strip():
            log.info("%s", line)


def launch_training(
    request: dict[str, Any],
    processes: int,
    mixed_precision: str,
    log: logging.Logger | logging.LoggerAdapter,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run the training of ``request`` in ``processes`` processes; return its parts and counts."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not torch.cuda.is_available():
        # Accelerate's multi-process run on CPU (gloo): for trying the path without GPUs.
        env["ACCELERATE_USE_CPU"] = "1"
    with tempfile.TemporaryDirectory(prefix="train-launch-") as folder:
        request_path, result_path = Path(folder, "request.json"), Path(folder, "result.json")
        request_path.write_text(json.dumps(request))
        port = rendezvous_port()
        command = launch_command(processes, mixed_precision, port, request_path, result_path)
        log.info("launching %d training processes: %s", processes, shlex.join(command))
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # so that the whole group can be stopped with this task
        )
        try:
            forward_output(process.stdout, log, on_progress)
            returncode = process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
        if returncode != 0:
            raise TrainingLaunchError(
                f"the {processes}-process training run exited with status {returncode}; "
                "its output is in the log above. Set train.processes=1 to train in one process"
            )
        return json.loads(result_path.read_text())


def build_training(
    store: Store,
    tokens: StageRef,
    tokenizer_ref: StageRef,
    model_config: ModelConfig,
    train_config: TrainConfig,
    writer: StageWriter,
    log,
    on_progress: ProgressCallback | None = None,
) -> dict:
    """Train in this process, or in one launched process per GPU when there are several."""
    processes = train_config.resolved_processes()
    if processes == 1:
        return train_from_shards(
            store, tokens, tokenizer_ref, model_config, train_config, writer, log, on_progress
        )
    request = {
        **training_request(tokens, tokenizer_ref, model_config, train_config, store.url),
        "stage": writer.stage,
        "key": writer.key,
        # A Prefect block's keys travel in the request file (in a private folder, removed after
        # the run), so the launched processes need neither the Prefect API nor secrets in env.
        "s3_credentials": store.credentials,
    }
    outcome = launch_training(
        request, processes, resolve_mixed_precision(train_config.mixed_precision), log, on_progress
    )
    writer.parts.update({n: PartInfo.model_validate(i) for n, i in outcome["parts"].items()})
    return outcome["counts"]


def main(argv: list[str] | None = None) -> None:
    """One launched training process: train, and on the main process report parts and counts."""
    request_path, result_path = argv or sys.argv[1:]
    request = json.loads(Path(request_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        LevelPrefixFormatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    )
    log = logging.getLogger("codeparrot_ds.train")
    # Only the main process reports progress; the others speak up only when something is wrong.
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.handlers = [handler]
    log.propagate = False
    store = Store(request["store_url"], request.get("s3_credentials"))
    writer = StageWriter(store, request["stage"], request["key"])

    def print_progress(record: dict[str, Any]) -> None:
        print(PROGRESS_MARK + json.dumps(record), flush=True)

    counts = train_from_shards(
        store,
        StageRef.model_validate(request["tokens"]),
        StageRef.model_validate(request["tokenizer"]),
        ModelConfig.model_validate(request["model"]),
        TrainConfig.model_validate(request["train"]),
        writer,
        log,
        print_progress,
    )
    if counts:
        parts = {name: info.model_dump() for name, info in writer.parts.items()}
        Path(result_path).write_text(json.dumps({"parts": parts, "counts": counts}))


if __name__ == "__main__":
    main()
