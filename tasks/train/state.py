"""A training run's state in checkpoints: saved in the background, resumed exactly.

A save takes a copy of the state off the device at the step (the only part training waits
for); serialising, writing and committing it run on a background thread while training goes
on. Each process writes its own small ``rank-N.pt`` (random generators, data position) at
once; the main process writes ``state.pt`` (weights, optimizer, schedule, the run so far)
and commits the checkpoint when all are written. Accelerate's ``save_state``/``load_state``
do not fit here: they write to a local folder (the store may be S3), synchronously, and load
without checks.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from tasks.train.checkpoint import Checkpoint, CheckpointStore, from_bytes, to_bytes
from tasks.train.data import StreamPosition

STATE_FILE = "state.pt"


def rank_file(rank: int) -> str:
    """The checkpoint file of one process's own state."""
    return f"rank-{rank}.pt"


def rng_state() -> dict[str, Any]:
    """The state of torch's generators, which drive dropout (the data order has its own)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by ``rng_state``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class HostMirror:
    """Copies of device tensors in host memory, the same buffers reused at every save.

    On a GPU the buffers are pinned and filled without blocking, then synchronised once.
    Reuse is safe because a save waits for the one before it to finish writing.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def copy(self, value: Any, path: tuple = ()) -> Any:
        """A host copy of a nest of dicts, lists and tensors; other values are deep-copied."""
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value, path)
        if isinstance(value, dict):
            return {k: self.copy(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.copy(v, (*path, i)) for i, v in enumerate(value))
        return copy.deepcopy(value)

    def _copy_tensor(self, tensor: torch.Tensor, path: tuple) -> torch.Tensor:
        if tensor.device.type == "cpu":
            return tensor.detach().clone()
        buffer = self.buffers.get(path)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.buffers[path] = buffer
        buffer.copy_(tensor.detach(), non_blocking=True)
        return buffer

    def synchronize(self) -> None:
        """Wait for the copies under way (nothing to wait for on CPU)."""
        if self.buffers and torch.cuda.is_available():
            torch.cuda.synchronize()


@dataclass
class CheckpointReport:
    """A committed checkpoint: its step, the seconds training waited for it, and the
    seconds it took in the background."""

    step: int
    blocking_seconds: float
    background_seconds: float


class CheckpointSaver:
    """Saves training state every so often; writes and commits run in the background.

    At most one save is in flight: the next one (and the end of training) waits for it, so a
    slow store slows training instead of piling up copies of the state in memory.
    """

    def __init__(self, checkpoints: CheckpointStore, accelerator: Accelerator) -> None:
        self.checkpoints = checkpoints
        self.accelerator = accelerator
        self.mirror = HostMirror()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future | None = None
        self.finished: list[CheckpointReport] = []

    def save(self, step: int, position: StreamPosition, state: dict[str, Any]) -> float:
        """Start saving the state at ``step``; return the seconds training was held up.

        ``state`` holds the main process's payload (model, optimizer, scheduler, scaler,
        result); other processes pass their view of it and only their rank file is written.
        """
        start = time.perf_counter()
        self._collect(block=True)
        accelerator = self.accelerator
        rank_state = {"rng": rng_state(), "position": vars(position)}
        self.checkpoints.write_file(
            step, rank_file(accelerator.process_index), to_bytes(rank_state)
        )
        if accelerator.num_processes > 1:
            accelerator.wait_for_everyone()  # every rank file is written before the commit
        if accelerator.is_main_process:
            payload = self.mirror.copy(state)
            self.mirror.synchronize()
            blocking = time.perf_counter() - start
            self.pending = self.executor.submit(self._write_and_commit, step, payload, blocking)
        return time.perf_counter() - start

    def _write_and_commit(self, step: int, payload: dict, blocking: float) -> CheckpointReport:
        start = time.perf_counter()
        self.checkpoints.write_file(step, STATE_FILE, to_bytes(payload))
        names = [STATE_FILE] + [rank_file(r) for r in range(self.accelerator.num_processes)]
        self.checkpoints.commit(step, names, {"world": self.accelerator.num_processes})
        return CheckpointReport(step, blocking, time.perf_counter() - start)

    def _collect(self, block: bool) -> None:
        """Move the save under way to ``finished`` once it is done (waiting for it with
        ``block``); raise what it raised."""
        if self.pending is not None and (block or self.pending.done()):
            pending, self.pending = self.pending, None
            self.finished.append(pending.result())

    def _take_finished(self) -> list[CheckpointReport]:
        finished, self.finished = self.finished, []
        return finished

    def committed(self) -> list[CheckpointReport]:
        """Checkpoints committed since the last call, without waiting for one under way."""
        self._collect(block=False)
        return self._take_finished()

    def close(self) -> list[CheckpointReport]:
        """Wait for the save under way and stop the background thread; return what is
        committed and not yet reported."""
        try:
            self._collect(block=True)
        finally:
            self.executor.shutdown(wait=True)
        return self._take_finished()


def parse_checkpoint(
    checkpoint: Checkpoint, model: torch.nn.Module, rank: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The payloads of a checkpoint, checked against this run before anything is loaded.

    Raises on anything a crafted or foreign checkpoint could hold: a payload that is not plain
    tensors and data (``weights_only``), missing entries, or weights of another shape.
    """
    state = from_bytes(checkpoint.files[STATE_FILE])
    rank_state = from_bytes(checkpoint.files[rank_file(rank)])
    for key in ("model", "optimizer", "scheduler", "result"):
        if not isinstance(state.get(key), dict):
            raise ValueError(f"no {key} state")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = {k: getattr(v, "shape", None) for k, v in state["model"].items()}
    if found != expected:
        raise ValueError("its weights do not fit this model")
    StreamPosition(**rank_state["position"])
    if not isinstance(rank_state.get("rng"), dict):
        raise ValueError("no random generator state")
    return state, rank_state


def newest_sound_checkpoint(
    checkpoints: CheckpointStore,
    model: torch.nn.Module,
    accelerator: Accelerator,
    log: logging.Logger | logging.LoggerAdapter,
) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """The newest committed checkpoint that loads into this run: (step, state, rank state).

    One saved by another number of processes, or that fails to parse, is skipped for the one
    before, as a damaged one is.
    """
    rank = accelerator.process_index
    for checkpoint, record in checkpoints.verified([STATE_FILE, rank_file(rank)]):
        if record.get("world") != accelerator.num_processes:
            log.warning(
                "checkpoint at step %d was saved by %s process(es), this run has %d: skipped",
                checkpoint.step,
                record.get("world"),
                accelerator.num_processes,
            )
            continue
        try:
            state, rank_state = parse_checkpoint(checkpoint, model, rank)
        except Exception as err:  # noqa: BLE001 - any failure means: not this checkpoint
            log.warning(
                "checkpoint at step %d does not load (%s: %s); skipped",
                checkpoint.step,
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
            )
            continue
        return checkpoint.step, state, rank_state
    return None
