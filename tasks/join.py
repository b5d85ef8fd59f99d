"""What the two joins (filter's and tokenize's) share: their key's parameters and the
groups' counts added up."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from storage.stages import StageRef, StageSpec
from tasks.params import StageParams
from tasks.stage import Stage

# Counts of a group that are not added up over the groups.
NOT_SUMMED = {"context_length", "vocab_size"}


def sum_counts(refs: list[StageRef]) -> dict[str, Any]:
    """The groups' integer counts added up (settings such as the context length are kept)."""
    total: Counter = Counter()
    kept: dict[str, Any] = {}
    for ref in refs:
        for name, value in ref.counts.items():
            if name in NOT_SUMMED:
                kept[name] = value
            elif isinstance(value, int) and not isinstance(value, bool):
                total[name] += value
    return {**dict(total), **kept}


class JoinParams(StageParams):
    """What a join's key hashes besides its members: the settings it was made with."""

    members: list[str]
    """The members' stage/key, in corpus order."""
    settings: dict[str, Any]
    """The settings of the stage whose groups are joined."""


def join_spec(
    stage: Stage, groups: list[StageRef], settings: BaseModel, inputs: dict[str, StageRef]
) -> StageSpec:
    """Where a stage's join of these groups' outputs, made with these settings, lives."""
    params = JoinParams(
        members=[g.prefix for g in groups], settings=settings.model_dump(mode="json")
    )
    return stage.spec(params, inputs)
