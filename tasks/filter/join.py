"""The filter stage's join: drop exact and near duplicates across the groups' filtered
documents, and list the groups as one output, ``{store}/filter/{key}``.

The output is small: a member list (``storage.shards.MEMBERS_PART``) naming the groups'
outputs in corpus order, plus one drop list per group that has duplicates. Readers follow the
list, so later stages read every group's shards in a deterministic order without a copy.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.shards import SPLITS, Member, write_members
from storage.stages import StageRef, StageWriter, part_names, read_manifest, read_part
from storage.store import Store
from tasks.corpus.build import CorpusError
from tasks.filter.build import INDEX_DIR, FilterConfig, FilterError
from tasks.filter.dedup import Linker, MinHasher, band_column, choose_drops
from tasks.join import sum_counts


def read_index(store: Store, ref: StageRef, columns: list[str]) -> pa.Table:
    """Some columns of a group's dedup index (its parts in order)."""
    manifest = read_manifest(store, ref)
    tables = [
        pq.read_table(io.BytesIO(read_part(store, ref, name, manifest)), columns=columns)
        for name in part_names(manifest, INDEX_DIR)
    ]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def deduplicate(
    store: Store, groups: list[StageRef], config: FilterConfig, writer: StageWriter
) -> dict[str, Any]:
    """Find the duplicates across the groups from their indexes, write the member list with a
    drop list per group, and return the whole corpus's counts (after dedup)."""
    bands = 0
    if config.near_duplicate_threshold is not None:
        bands, _ = MinHasher(config.near_duplicate_threshold, config.minhash_permutations).shape
    columns = ["split", "position", "id", "bytes", "exact", *map(band_column, range(bands))]
    base = [read_index(store, g, columns) for g in groups]  # keys only, never code
    ids = [i for t in base for i in t["id"].to_pylist()]
    exact = [e for t in base for e in t["exact"].to_pylist()]
    linker = Linker(len(ids))
    if config.deduplicate:
        linker.link_equal(exact)
    for band in range(bands):
        column = band_column(band)
        linker.link_equal(key for t in base for key in t[column].to_pylist())
    drops = choose_drops(ids, exact, linker)

    counts = sum_counts(groups)
    removed: Counter = Counter(drops.values())
    members, start = [], 0
    for group, table in zip(groups, base, strict=True):
        mine = [i - start for i in range(start, start + table.num_rows) if i in drops]
        start += table.num_rows
        name = None
        if mine:
            name = f"drops/{group.key}.parquet"
            dropped = table.take(mine)
            buffer = io.BytesIO()
            pq.write_table(dropped.select(["split", "position", "id"]), buffer)
            writer.write_bytes(name, buffer.getvalue())
            counts["bytes_kept"] -= sum(dropped["bytes"].to_pylist())
            for split in dropped["split"].to_pylist():
                counts[f"{split}_documents"] -= 1
        members.append(Member(group, name))
    write_members(writer, members)
    counts["duplicates"] = removed["duplicates"]
    counts["near_duplicates"] = removed["near_duplicates"]
    counts["kept"] -= len(drops)
    counts["groups"] = len(groups)
    check_corpus_counts(counts, config)
    return counts


def check_corpus_counts(counts: dict[str, Any], config: FilterConfig) -> None:
    """Clear errors for a corpus that leaves nothing to train or validate on."""
    if counts.get("read", 0) == 0:
        skipped = {k: v for k, v in counts.items() if k.startswith("skipped")}
        raise CorpusError(
            f"the corpus is empty: {counts.get('seen', 0)} files seen, none readable as UTF-8 "
            f"text (skipped: {skipped}); point the corpus at Python source files"
        )
    if counts.get("kept", 0) == 0:
        raise FilterError(
            f"the keyword filter kept nothing: none of {counts['read']} files contains any of "
            f"{config.keywords}; widen filter.keywords or use a corpus with data-science code"
        )
    for split in SPLITS:
        if counts.get(f"{split}_documents", 0) == 0:
            raise FilterError(
                f"the {split} split is empty ({counts['kept']} files kept, "
                f"valid_fraction={config.valid_fraction}); adjust filter.valid_fraction "
                "or read more files (corpus.max_files)"
            )
