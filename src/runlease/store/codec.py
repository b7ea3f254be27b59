"""How a value travels to and from a central manager, and what happens when it is malformed.

Remote managers hold values as JSON (AWS: the SecretString; Vault: a field of
the KV data map). Anybody with write access to the manager can put something
there that runlease did not write, so decoding is strict, and its errors name
the secret and the version -- never the text that failed to parse, because
that text is very likely a credential.
"""

from __future__ import annotations

import json
from typing import Any

from runlease.errors import InvalidValueError
from runlease.models import SecretPath, SecretValue


def check_value(path: SecretPath, value: Any) -> SecretValue:
    """Refuse anything but a connection dict or a string, naming the path."""
    if not isinstance(value, (dict, str)):
        raise InvalidValueError(
            f"secret value for {path} must be a connection dict or a string, got {type(value).__name__}"
        )
    return value


def encode_json(path: SecretPath, value: SecretValue) -> str:
    """Compact JSON text of a value (an object for connections, a JSON string otherwise)."""
    check_value(path, value)
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        raise InvalidValueError(f"secret value for {path} is not JSON-serializable") from None


def malformed(path: SecretPath, version: int | None, where: str, why: str) -> InvalidValueError:
    """The error for a stored value runlease cannot use; names the secret, never the value."""
    at = f" version {version}" if version is not None else ""
    return InvalidValueError(
        f"secret {path}{at} in {where} is malformed: {why}; it was probably written outside runlease "
        "(write a new version with `runlease put`)"
    )


def parse_stored_json(path: SecretPath, version: int | None, where: str, text: Any) -> Any:
    """Stored text parsed as JSON, any type; errors name path/version/location and the position only."""
    if not isinstance(text, str):
        raise malformed(path, version, where, "it holds no text value (binary or empty)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise malformed(path, version, where, f"not valid JSON (line {err.lineno}, column {err.colno})") from None


def decode_json(path: SecretPath, version: int | None, where: str, text: Any) -> SecretValue:
    """Parse a stored JSON value; errors name path/version/location and the position only."""
    return decoded(path, version, where, parse_stored_json(path, version, where, text))


def decoded(path: SecretPath, version: int | None, where: str, value: Any) -> SecretValue:
    """Check the type of an already-parsed value."""
    if not isinstance(value, (dict, str)):
        raise malformed(path, version, where, f"expected a JSON object or string, found {type(value).__name__}")
    return value
