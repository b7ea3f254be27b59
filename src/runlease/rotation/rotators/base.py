"""What a rotator is: the target-system half of each rotation step.

The engine owns the runlease half (stage labels, the state record, audit)
and calls the rotator for what happens *outside* runlease. Every method must
be safe to call again after a crash -- the engine re-runs a step whose
commit it never saw -- and must read everything it needs from its
arguments (the values come from the store, never from memory), because the
process that resumes a rotation is not the one that started it.

Errors: raise :class:`~runlease.rotation.errors.RotationTestFailed` from
``test`` when the PENDING credential does not work (final: the engine
discards it); anything else (an unreachable target) is transient and the
step can be retried. Messages name users, roles and hosts, never a value.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from runlease.errors import ConfigError
from runlease.models import SecretPath, SecretValue
from runlease.rotation.policy import RotationPolicy
from runlease.store.base import StoredSecret

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RotationContext:
    """What a rotator may know about the rotation it serves."""

    path: SecretPath
    policy: RotationPolicy
    #: The rotation token: an idempotency key the rotator can pass on (AWS ClientRequestToken).
    token: str
    started_at: datetime
    #: Read another runlease secret (an admin connection) through the broker: policy-checked, audited, masked.
    read_secret: Callable[[str], StoredSecret] = field(repr=False)
    #: Record a target-side effect the rotator decided on its own (an IAM key it deleted) in the audit
    #: trail: ``note(effect, facts)``; facts are identifiers, never values.
    note: Callable[[str, dict[str, Any]], None] = field(default=lambda effect, facts: None, repr=False)


class Rotator(Protocol):
    name: str
    #: Steps whose rotator call never leaves runlease (no network, no target effect): the engine
    #: may commit them together. Everything else commits on its own, outside any store transaction.
    offline_steps: frozenset[Any]

    def check_settings(self, settings: dict[str, Any], path: SecretPath) -> None:
        """Validate ``rotation.settings`` when a policy is set (errors name the key)."""
        ...

    def create(self, ctx: RotationContext, current: StoredSecret) -> SecretValue:
        """The new value to stage as PENDING (may create it in the target, e.g. an IAM key)."""
        ...

    def set(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Make the target accept ``pending`` (without breaking ``current``)."""
        ...

    def test(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Authenticate with ``pending``; raise RotationTestFailed if it does not work."""
        ...

    def finish(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Target-side promotion, if the target has stages of its own (before runlease moves CURRENT)."""
        ...

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        """Disable ``previous`` in the target (the grace period is over)."""
        ...

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Undo ``set`` for a PENDING that failed its test, leaving ``current`` alone."""
        ...


def rotator_settings(model: type[M], settings: dict[str, Any], path: SecretPath | str, rotator: str) -> M:
    """Validate settings into ``model``; the error names each bad key (never echoes values)."""
    try:
        return model.model_validate(settings)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"rotation settings of {path} for rotator {rotator!r}: {problems}") from None


def new_secret_string(nbytes: int, prefix: str = "") -> str:
    """``prefix`` + ``nbytes`` of CSPRNG randomness, URL-safe (fits headers, URIs and SQL literals)."""
    return prefix + secrets.token_urlsafe(nbytes)


def connection_value(secret: StoredSecret, rotator: str) -> dict[str, Any]:
    """The stored value as a connection dict, or a ConfigError naming the secret."""
    if not isinstance(secret.value, dict):
        raise ConfigError(f"rotator {rotator!r} rotates connections; {secret.path} holds a plain string")
    return secret.value
