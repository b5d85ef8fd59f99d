"""The base of every stage's parameter model."""

from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    """Stage parameters: unknown fields are errors, so a misspelt setting is never ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
