"""S3 credentials kept in a Prefect block, so that workers need no secrets in their environment.

Save once (``S3StoreCredentials(access_key_id=..., secret_access_key=...).save("name")``) and
set ``CODEPARROT_S3_CREDENTIALS_BLOCK=name`` where the pipeline runs. The stage tasks load the
block and hand the keys to each store they open (``Store(url, credentials)``); the store layer
imports no Prefect and keeps no credentials of its own.
"""

from __future__ import annotations

import functools
from typing import Any

from prefect.blocks.core import Block
from pydantic import SecretStr

from storage.settings import current_settings
from storage.store import StoreError


class S3StoreCredentials(Block):
    """An S3 access key pair (and optional session token) for the pipeline's store."""

    _block_type_name = "CodeParrot-DS S3 Credentials"
    _block_type_slug = "codeparrot-ds-s3-credentials"

    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None


@functools.cache
def load_s3_credentials(block_name: str) -> dict[str, Any]:
    """s3fs credential arguments from a saved block; a missing block is a clear error.

    Loaded once per process: every store object would otherwise ask the Prefect API again.
    """
    try:
        block = S3StoreCredentials.load(block_name, _sync=True)
    except ValueError as err:
        raise StoreError(
            f"no S3 credentials block named {block_name!r} on the Prefect server; save one "
            "with tasks.credentials.S3StoreCredentials(...).save(name)"
        ) from err
    options: dict[str, Any] = {
        "key": block.access_key_id,
        "secret": block.secret_access_key.get_secret_value(),
    }
    if block.session_token is not None:
        options["token"] = block.session_token.get_secret_value()
    return options


def block_credentials() -> dict[str, Any] | None:
    """The keys of the block that ``$CODEPARROT_S3_CREDENTIALS_BLOCK`` names; None if unset."""
    block_name = current_settings().s3_credentials_block
    return load_s3_credentials(block_name) if block_name else None
