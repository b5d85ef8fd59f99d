"""Every ``CODEPARROT_*`` environment variable, in one validated object, read when used.

Each field is the variable ``CODEPARROT_<FIELD>``; the docs' table of variables is generated
from this model (``tests/unit/test_docs.py`` checks it). It is a plain pydantic model rather
than pydantic-settings so that the training code runs where only torch and pydantic are
installed (a lent GPU machine). It sits in the bottom layer, so the store can read it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from storage.errors import UserError

ENV_PREFIX = "CODEPARROT_"
# The most retries a stage task may take after transient I/O faults.
MAX_IO_RETRIES = 8


class SettingsError(UserError, ValueError):
    """A ``CODEPARROT_*`` variable whose value cannot be used."""


class Settings(BaseModel):
    """The pipeline's environment: where the store is, how to reach S3, Dask and training."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True, extra="forbid")

    store: str = "./codeparrot-store"
    """The store of a run that names none: a folder or `s3://bucket/prefix`."""
    cache_dir: str = "~/.cache/codeparrot-ds"
    """Where parts read from a remote store are cached, under their sha256."""
    s3_endpoint_url: str | None = None
    """An S3-compatible server, e.g. `http://127.0.0.1:8333`."""
    s3_region: str | None = None
    """The S3 region name."""
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """S3 addressing: `auto`, `path` or `virtual`."""
    s3_credentials_block: str | None = None
    """The name of a saved `S3StoreCredentials` Prefect block to take the S3 keys from."""
    lock_ttl_seconds: float = Field(default=120.0, gt=0, le=86_400)
    """After how long without a heartbeat another machine's stage lock is broken."""
    io_retry_delays: list[float] = Field(default=[5.0, 30.0, 120.0], max_length=MAX_IO_RETRIES)
    """Seconds between a stage's attempts after a transient I/O fault, one retry each
    (comma-separated, 0 to 3600 each, at most 8; empty: no retry)."""
    dask_address: str | None = None
    """The Dask scheduler (`tcp://host:port`) of the group tasks, `local` or `none`."""
    dask_workers: int | None = Field(default=None, ge=1, le=1024)
    """Worker processes of the local Dask cluster (default: one per core)."""
    training_deployment: str | None = None
    """The deployment that trains (`codeparrot-ds-train/gpu`), or `local`."""

    @field_validator("io_retry_delays", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("io_retry_delays")
    @classmethod
    def _delays_in_range(cls, delays: list[float]) -> list[float]:
        if any(not 0 <= delay <= 3600 for delay in delays):
            raise ValueError("each delay must be 0 to 3600 seconds")
        return delays

    @staticmethod
    def variable(field: str) -> str:
        """The environment variable of a field."""
        return f"{ENV_PREFIX}{field.upper()}"


def current_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings in ``environ`` (this process's environment by default), read now.

    An empty variable counts as unset; an invalid one is a ``SettingsError`` naming it.
    """
    environ = os.environ if environ is None else environ
    values = {
        name: environ[Settings.variable(name)].strip()
        for name in Settings.model_fields
        if environ.get(Settings.variable(name), "").strip()
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0])
        raise SettingsError(
            f"${Settings.variable(name)}={values.get(name)!r} is invalid ({first['msg']}): "
            f"{Settings.model_fields[name].description}"
        ) from None


def variables_table() -> str:
    """The variables as the Markdown table of ``docs/operations.md``."""
    rows = ["| variable | meaning |", "|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{Settings.variable(name)}` | {' '.join(field.description.split())} |")
    return "\n".join(rows)
