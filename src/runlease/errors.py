"""Error types for runlease.

Every error carries a message that names the offending path, key or setting
and never the secret value, plus the process exit code the CLI uses. Callers
catch :class:`RunleaseError` to get "one clear line, non-zero exit".
"""

from __future__ import annotations


class RunleaseError(Exception):
    """Base class: a user-facing failure with a clear message and exit code."""

    exit_code: int = 1


class InvalidPathError(RunleaseError, ValueError):
    """A secret path (or connection reference) does not have the required shape."""

    exit_code = 2


class InvalidValueError(RunleaseError, ValueError):
    """A value (connection URI/JSON, TTL, ...) could not be parsed.

    The message names the field that is wrong, never the value itself.
    """

    exit_code = 2


class ConfigError(RunleaseError):
    """Settings, home directory or policy file are missing or malformed."""

    exit_code = 2


class MasterKeyError(RunleaseError):
    """The key-encryption key is missing, unreadable, or does not match the store."""

    exit_code = 3


class SecretNotFoundError(RunleaseError, LookupError):
    """No live secret (or no such version/stage) at the requested path."""

    exit_code = 4


class ConflictError(RunleaseError):
    """A check-and-set write lost: the secret changed since the caller read it."""

    exit_code = 5


class AccessDeniedError(RunleaseError, PermissionError):
    """Policy denied the request. The denial has already been audited."""

    exit_code = 6


class IntegrityError(RunleaseError):
    """Stored data failed authentication: tampering, corruption, or a moved record."""

    exit_code = 7


class StoreUnavailableError(RunleaseError):
    """The store cannot be used: a file that is not a runlease database, or a
    central manager (Vault, AWS) that is unreachable or answered with an error.
    The message names the file or the address."""

    exit_code = 8


class StoreAccessDeniedError(RunleaseError, PermissionError):
    """A central manager refused runlease's own credentials (HTTP 403 after one
    fresh login). Unlike :class:`AccessDeniedError` this is not a runlease policy
    decision: the Vault policy or IAM permissions need fixing."""

    exit_code = 6


class LeaseNotFoundError(RunleaseError, LookupError):
    """No lease with that id exists in the ledger."""

    exit_code = 4


class RevocationIncompleteError(RunleaseError):
    """A bulk revoke/sweep closed what it could, but some issuers failed (each failure is audited).

    Bulk revocation must not stop at the first broken issuer: one unreachable
    PostgreSQL would otherwise keep every other lease of the run alive.
    """

    exit_code = 9

    def __init__(self, closed: int, failed: list[str]) -> None:
        self.closed = closed
        self.failed = failed
        super().__init__(
            f"closed {closed} lease(s); {len(failed)} could not be revoked by their issuer "
            f"(audited as errors, still active until retried or expired): {', '.join(failed)}"
        )


class BackendError(RunleaseError):
    """An external system (PostgreSQL, Vault, AWS) was unreachable, timed out, or refused.

    The message names the system's address and what was asked of it, never a
    password, token or connection string (those hold credentials).
    """

    exit_code = 9


def scrub(text: str, *secrets: str | None) -> str:
    """Replace every given secret in ``text`` with ``***`` before it goes into an error message.

    Defence in depth for messages built from a backend's own error text
    (libpq, botocore, Vault), which is not supposed to echo credentials.
    """
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), "***")
    return text
