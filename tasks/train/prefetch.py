"""Each optimizer step's rows, made ahead on a background thread and copied without blocking."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from tasks.train.data import StreamPosition

_STOP_POLL_SECONDS = 0.1


class StepPrefetcher:
    """Joins ``batches_per_step`` batches of a stream into one step's rows, ``depth`` steps
    ahead, on a background thread. On a GPU the rows are pinned, so the copy to the device
    does not block the host.

    Each item is (stream position after this step's rows, rows on the device): the position
    is what a checkpoint at that step must record, however far ahead the thread has read.
    """

    def __init__(
        self,
        batches: Iterator[tuple[StreamPosition, torch.Tensor]],
        batches_per_step: int,
        steps: int,
        device: torch.device,
        depth: int = 2,
    ) -> None:
        self.device = device
        self.pin = device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._fill, args=(batches, batches_per_step, steps), daemon=True
        )
        self.thread.start()

    def _fill(self, batches, batches_per_step: int, steps: int) -> None:
        try:
            for _ in range(steps):
                parts = [next(batches) for _ in range(batches_per_step)]
                rows = torch.cat([batch for _, batch in parts])
                if self.pin:
                    rows = rows.pin_memory()
                if not self._put((parts[-1][0], rows)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the training thread
            self._put(err)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=_STOP_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[StreamPosition, torch.Tensor]:
        """The next step's position and rows, the rows' copy to the device under way."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading the training rows failed: {item}") from item
        position, rows = item
        return position, rows.to(self.device, non_blocking=self.pin)

    def close(self) -> None:
        """Stop the background thread (it may be waiting to hand over a step)."""
        self.stopping.set()
        self.thread.join()
