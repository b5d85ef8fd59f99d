"""Duplicates across the corpus's groups: exact (same code up to whitespace) and near (MinHash
with LSH, the codeparrot data's dedup at Jaccard 0.85).

Each group's filter writes an index beside its documents: per kept file its identity, its exact
digest and its LSH band keys (``index_schema``). The join reads each index once, links files
that share a digest and then, band by band, files that share a band key, and keeps in each
linked cluster the file with the smallest identity. It never reads code and holds only the
indexes' keys (about 100 bytes a file), so the corpus never has to fit in one process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

# codeparrot's near-dedup tokens: runs of letters, digits and underscores, as a set.
WORD = re.compile(r"[A-Za-z0-9_]+")
# Files with fewer distinct words are too short for a meaningful estimate: exact dedup only.
MIN_WORDS = 10
MINHASH_SEED = 1


def band_column(band: int) -> str:
    """The index column of one LSH band's keys."""
    return f"band_{band:03d}"


@dataclass(frozen=True)
class MinHasher:
    """MinHash signatures of a file's word set, cut into LSH bands.

    The bands and rows per band are datasketch's optimum for the threshold (false positives and
    negatives weighted equally): two files share a band key with high probability when their
    Jaccard similarity is above the threshold, and rarely when it is well below.
    """

    threshold: float
    permutations: int

    @cached_property
    def shape(self) -> tuple[int, int]:
        """Bands, rows per band."""
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.permutations)
        return lsh.b, lsh.r

    @cached_property
    def _minhash(self):
        from datasketch import MinHash

        return MinHash(num_perm=self.permutations, seed=MINHASH_SEED)

    def band_keys(self, content: str) -> list[int] | None:
        """The file's band keys, or None when it has too few distinct words."""
        words = set(WORD.findall(content))
        if len(words) < MIN_WORDS:
            return None
        minhash = self._minhash.copy()  # the permutations are drawn once, not per file
        minhash.update_batch([w.encode() for w in words])
        values = minhash.hashvalues.astype("<u8")
        bands, rows = self.shape
        return [
            int.from_bytes(
                hashlib.blake2b(
                    values[b * rows : (b + 1) * rows].tobytes(), digest_size=8
                ).digest(),
                "big",
            )
            for b in range(bands)
        ]


def index_schema(bands: int) -> pa.Schema:
    """The columns of a group's index: one row per kept file, in split and shard order."""
    return pa.schema(
        [
            ("split", pa.string()),
            ("position", pa.int64()),
            ("id", pa.string()),
            ("bytes", pa.int64()),
            ("exact", pa.binary(16)),
            *((band_column(b), pa.uint64()) for b in range(bands)),
        ]
    )


class Linker:
    """Union-find over files numbered 0..n-1: files that share a key end in one cluster."""

    def __init__(self, count: int) -> None:
        self.parent = np.arange(count, dtype=np.int64)

    def find(self, item: int) -> int:
        """The cluster's representative."""
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return int(root)

    def link_equal(self, keys: Iterable) -> None:
        """Link every file to the first earlier file with the same key (None: no key)."""
        first: dict = {}
        for item, key in enumerate(keys):
            if key is None:
                continue
            seen = first.setdefault(key, item)
            if seen != item:
                a, b = self.find(seen), self.find(item)
                if a != b:
                    self.parent[max(a, b)] = min(a, b)


def choose_drops(ids: list[str], exact: list[bytes], linker: Linker) -> dict[int, str]:
    """Which files to drop and why (``duplicates`` or ``near_duplicates``): in each cluster the
    file with the smallest identity (then the earliest) is kept, whatever the grouping."""
    keeper: dict[int, int] = {}
    for item in sorted(range(len(ids)), key=lambda i: (ids[i], i)):
        keeper.setdefault(linker.find(item), item)
    drops = {}
    for item in range(len(ids)):
        kept = keeper[linker.find(item)]
        if kept != item:
            drops[item] = "duplicates" if exact[item] == exact[kept] else "near_duplicates"
    return drops


def content_hash(content: str) -> bytes:
    """A digest of the content with all runs of whitespace collapsed, for duplicate detection."""
    normalized = " ".join(content.split())
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).digest()
