"""The SecretStore protocol: what every central manager (local, Vault, AWS) must offer.

Versions are immutable; stages (CURRENT/PENDING/PREVIOUS) are movable labels.
``resolve`` answers "which version holds this stage right now" and must be
authoritative: the broker's cache keys plaintext by (path, version) and
always asks ``resolve`` first, so a moved stage is never served stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from runlease.models import SecretInfo, SecretPath, SecretValue, SecretVersion, Stage


@dataclass(frozen=True)
class StoredSecret:
    """A decrypted version. ``repr`` hides the value so it cannot reach a log by accident."""

    path: SecretPath
    version: int
    value: SecretValue = field(repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """Where a stage points right now, plus the secret's (non-secret) metadata."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SecretStore(Protocol):
    """A central secret manager."""

    name: str

    def put(
        self,
        path: SecretPath,
        value: SecretValue,
        *,
        cas: int | None = None,
        stage: Stage = Stage.CURRENT,
    ) -> int:
        """Write a new version and return its number.

        ``cas`` is the version the caller expects CURRENT to be (0: the
        secret must not exist yet); a mismatch raises ``ConflictError`` and
        writes nothing. With ``stage=CURRENT`` the old CURRENT becomes
        PREVIOUS (as AWS Secrets Manager does); with ``stage=PENDING`` only
        the PENDING label is set, which is how rotation stages a new value.
        """
        ...

    def get(self, path: SecretPath, *, version: int | None = None, stage: Stage | None = Stage.CURRENT) -> StoredSecret:
        ...

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> Resolved:
        """Authoritative, uncached: which version holds ``stage`` now (and the metadata)."""
        ...

    def move_stage(self, path: SecretPath, stage: Stage, version: int | None, *, expected: int | None = None) -> None:
        """Point ``stage`` at ``version`` (None removes it), only if it still points at ``expected``."""
        ...

    def info(self, path: SecretPath) -> SecretInfo:
        ...

    def list(self, prefix: str = "", *, include_deleted: bool = False) -> list[SecretInfo]:
        ...

    def history(self, path: SecretPath) -> list[SecretVersion]:
        ...

    def delete(self, path: SecretPath) -> None:
        """Soft delete: reads fail, history stays; a later ``put`` revives the secret."""
        ...

    def update_metadata(
        self, path: SecretPath, patch: dict[str, Any], *, expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Merge non-secret settings (issuer, rotation policy) into the secret's metadata.

        ``expected`` makes the write a compare-and-swap: it happens only if, for
        every key given, the stored metadata holds exactly that value (``None``:
        the key is absent); otherwise ``ConflictError`` and nothing is written.
        Rotation claims a secret this way, so two rotators cannot both start.
        """
        ...


def metadata_conflicts(metadata: dict[str, Any], expected: dict[str, Any] | None) -> list[str]:
    """Keys whose stored value differs from ``expected`` (``None`` expects the key to be absent)."""
    if not expected:
        return []
    return sorted(key for key, want in expected.items() if metadata.get(key) != want)
