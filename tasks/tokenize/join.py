"""The tokenize stage's join: every group's token shards, in corpus order, as one output,
``{store}/tokenize/{key}`` (a member list, no copy)."""

from __future__ import annotations

from typing import Any

from storage.shards import SPLITS, Member, write_members
from storage.stages import StageRef, StageWriter
from tasks.join import sum_counts


def join_tokens(groups: list[StageRef], writer: StageWriter) -> dict[str, Any]:
    """List the groups' token shards as one output; a split without a row is a clear error."""
    write_members(writer, [Member(g) for g in groups])
    counts = sum_counts(groups)
    for split in SPLITS:
        if counts.get(f"{split}_rows", 0) == 0:
            raise ValueError(
                f"the {split} split yields no {counts.get('context_length')}-token row "
                f"({counts.get(f'{split}_tokens', 0)} tokens in "
                f"{counts.get(f'{split}_documents', 0)} files); use tokenize.mode=packed, a "
                "shorter context_length, or a larger corpus"
            )
    counts["groups"] = len(groups)
    return counts
