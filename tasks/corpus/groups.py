"""Cut a corpus listing into content-addressed groups: the unit that is filtered and tokenized
as one task, and rebuilt only when its own files change.

Local Python files are cut in path order at *content-defined* boundaries: a group ends after a
file whose path hashes to a boundary value, so adding a package (its files sit together in path
order) changes the groups around it and adds new ones, while every other group keeps its files
and so its key. A size cap keeps one huge package from becoming one huge task. Data files and
package archives are one group each: they are the units in which such corpora grow.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc


def path_hash(relpath: str) -> int:
    """A stable 64-bit hash of a file's path: its spread order and its boundary test."""
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")


def limit_listing(listing: pa.Table, max_files: int | None, max_bytes: int | None) -> pa.Table:
    """The first rows of a listing (which is in spread order) within the file and byte limits.

    Limits apply to listed sizes, before reading, so that a limited corpus is one fixed set of
    files that can be cut into groups; a file that then cannot be read is still counted.
    """
    rows = listing.num_rows if max_files is None else min(max_files, listing.num_rows)
    if max_bytes is not None and rows:
        before = pc.subtract(pc.cumulative_sum(listing["size"][:rows]), listing["size"][:rows])
        rows = int(pc.sum(pc.less(before, max_bytes)).as_py() or 0)
    return listing.slice(0, rows)


def cut_by_path(listing: pa.Table, group_files: int, group_max_bytes: int) -> list[pa.Table]:
    """Python files in (root, path) order, cut where a path hashes to a boundary (one file in
    ``group_files`` on average), where a group reaches ``group_max_bytes``, and after each
    root's last file (so a root that is added or removed changes no other root's groups)."""
    order = pc.sort_indices(listing, [("root", "ascending"), ("path", "ascending")])
    ordered = listing.take(order)
    groups, start, size = [], 0, 0
    sizes = ordered["size"].to_pylist()
    roots = ordered["root"].to_pylist()
    for row, path in enumerate(ordered["path"].to_pylist()):
        size += sizes[row]
        last_of_root = row + 1 == len(roots) or roots[row + 1] != roots[row]
        if path_hash(path) % group_files == 0 or size >= group_max_bytes or last_of_root:
            groups.append(ordered.slice(start, row + 1 - start))
            start, size = row + 1, 0
    if start < ordered.num_rows:
        groups.append(ordered.slice(start))
    return groups


def one_per_row(listing: pa.Table) -> list[pa.Table]:
    """One group per listed data file or package archive, in listing order."""
    return [listing.slice(row, 1) for row in range(listing.num_rows)]


def table_fingerprint(table: pa.Table) -> str:
    """A hash of a group's rows (not of a file format's bytes, which may change across pyarrow
    versions): the group's identity in every stage key it enters."""
    blob = json.dumps(table.to_pylist(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]
