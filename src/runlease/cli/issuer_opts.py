"""``runlease put --issuer NAME --issuer-opt KEY=VALUE``: issuer settings into the secret's metadata.

Issuer settings (parent role, role ARN, Vault role) are not secret, so they
may come from argv; credentials may not. A key that looks like a
credential is refused, so nobody puts a password where ``ps`` and shell
history can see it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from runlease.connection import SENSITIVE_EXTRA_WORDS
from runlease.errors import InvalidValueError, SecretNotFoundError
from runlease.models import SecretPath

if TYPE_CHECKING:  # pragma: no cover
    from runlease.runtime import Runtime


def _check_not_secret(key: str, value: Any) -> None:
    if any(word in key.lower() for word in SENSITIVE_EXTRA_WORDS):
        raise InvalidValueError(
            f"--issuer-opt {key}: issuer settings are kept in plain metadata; credentials belong in the "
            "secret's value"
        )
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            _check_not_secret(f"{key}.{inner_key}", inner)


def parse_issuer_opts(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (number, object, bool) is stored as such."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidValueError(f"--issuer-opt {key or item!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key == "issuer":
            raise InvalidValueError("--issuer-opt issuer=...: use --issuer")
        _check_not_secret(key, value)
        opts[key] = value
    return opts


def check_issuer_metadata(rt: "Runtime", path: SecretPath, issuer: str, opts: dict[str, Any]) -> None:
    """Validate the issuer's settings (existing metadata + new opts) before anything is written."""
    impl = rt.broker.issuers.get(issuer)
    check = getattr(impl, "check_metadata", None)
    if check is None:
        return
    try:
        existing = dict(rt.store.info(path).metadata)
    except SecretNotFoundError:
        existing = {}
    check({**existing, **opts, "issuer": issuer}, str(path))
