"""Issuer settings read from a secret's metadata, validated with errors that name path and key.

Why metadata: an issuer's settings (the parent role, the role ARN, the Vault
role) are not secret, change independently of the value, and belong to the
secret they describe. ``runlease put --issuer NAME --issuer-opt KEY=VALUE``
writes them. The value itself (an admin connection, base AWS credentials,
a Vault token) is what authenticates the issuer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runlease.errors import ConfigError
from runlease.models import SecretPath
from runlease.store.base import StoredSecret

M = TypeVar("M", bound=BaseModel)

#: How dynamic issuers read a secret again at revoke/renew time (the CURRENT
#: version: if the admin credential was rotated since the lease, the new one works).
SecretLoader = Callable[[SecretPath], StoredSecret]


def issuer_options(model: type[M], metadata: dict[str, Any], path: SecretPath | str, issuer: str) -> M:
    """Validate the metadata keys ``model`` declares; unrelated keys (rotation settings) are ignored."""
    try:
        return model.model_validate(metadata)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: "
            f"{'missing' if e['type'] == 'missing' else e['msg']}"
            for e in err.errors()
        )
        raise ConfigError(
            f"{path}: issuer {issuer!r} settings in metadata are invalid ({problems}); "
            f"set them with `runlease put {path} --issuer {issuer} --issuer-opt KEY=VALUE`"
        ) from None


def connection_value(secret: StoredSecret, issuer: str, expected: str) -> dict[str, Any]:
    """The stored value as a connection dict, or a clear error saying what the issuer needs."""
    if not isinstance(secret.value, dict):
        raise ConfigError(f"{secret.path}: issuer {issuer!r} needs a connection ({expected}), not a plain string")
    return secret.value
