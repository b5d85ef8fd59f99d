"""Token rows from memory-mapped shards, served in a deterministic, resumable order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


class TokenRows:
    """Rows of several (rows, context_length) arrays seen as one indexable collection."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        if not arrays:
            raise ValueError("no token shards to read")
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.context_length = arrays[0].shape[1]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, indices: np.ndarray) -> torch.Tensor:
        """The rows at these global indices as an int64 tensor (batch, context_length)."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices), self.context_length), dtype=np.int64)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.arrays[s][indices[mask] - self.offsets[s]]
        return torch.from_numpy(out)


@dataclass
class StreamPosition:
    """Where a batch stream is: the epoch and the number of batches served in it."""

    epoch: int = 0
    batch: int = 0


class BatchStream:
    """Endless shuffled batches, the same order for the same seed, split across processes.

    Each epoch is a fresh permutation seeded by (seed, epoch); process ``rank`` of ``world``
    takes every ``world``-th batch-sized slice, and incomplete final batches are dropped, so
    every process sees the same number of batches and no row is served twice in an epoch.
    """

    def __init__(
        self, rows: TokenRows, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.batches_per_epoch = len(rows) // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(rows)} rows make no batch of {batch_size} on {world} process(es)"
            )

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The row order of one epoch."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def iterate(
        self, start: StreamPosition | None = None
    ) -> Iterator[tuple[StreamPosition, torch.Tensor]]:
        """Yield (position after this batch, batch) forever, starting at ``start``."""
        position = StreamPosition(**vars(start)) if start else StreamPosition()
        while True:
            order = self.epoch_order(position.epoch)
            while position.batch < self.batches_per_epoch:
                first = (position.batch * self.world + self.rank) * self.batch_size
                batch = self.rows.take(order[first : first + self.batch_size])
                position = StreamPosition(position.epoch, position.batch + 1)
                yield position, batch
            position = StreamPosition(position.epoch + 1, 0)


def sequential_batches(
    rows: TokenRows, batch_size: int, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Batches in storage order, the last one possibly short; for evaluation."""
    for count, first in enumerate(range(0, len(rows), batch_size)):
        if limit is not None and count >= limit:
            return
        yield rows.take(np.arange(first, min(first + batch_size, len(rows))))
