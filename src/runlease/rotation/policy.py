"""A secret's rotation policy, kept in its metadata under ``rotation``.

Why metadata: the policy travels with the secret in every store (local,
Vault, AWS), ``runlease ls`` shows it, and the same store call that reads
the secret's stages returns it, so the engine never reads a policy that
belongs to another version of the world.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runlease.errors import ConfigError, InvalidValueError
from runlease.models import SecretPath

#: Metadata key of the policy.
POLICY_KEY = "rotation"

_DURATION_RE = re.compile(r"(\d+)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class RotationPolicy(BaseModel):
    """How often a secret rotates, how long the old credential stays valid, who owns it, and how."""

    model_config = ConfigDict(extra="forbid")

    rotator: str = Field(min_length=1, max_length=64)
    #: Seconds between rotations, counted from when the CURRENT version was created.
    interval_s: int = Field(ge=1)
    #: Seconds the replaced credential keeps working after ``finish`` (then ``retire`` disables it).
    grace_s: int = Field(default=3600, ge=0)
    owner: str = Field(default="", max_length=128)
    #: Rotator-specific, non-secret settings (an admin connection's *path*, an IAM user name...).
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.interval_s)

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.grace_s)

    def to_metadata(self) -> dict[str, Any]:
        return {POLICY_KEY: self.model_dump(mode="json", exclude_defaults=False)}


def parse_duration(text: str, what: str) -> int:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` -> seconds; errors name the option."""
    match = _DURATION_RE.fullmatch(str(text).strip().lower())
    if not match:
        raise InvalidValueError(f"{what} {text!r} is not a duration: use e.g. 90s, 15m, 12h, 30d, 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def policy_of(path: SecretPath, metadata: dict[str, Any]) -> RotationPolicy | None:
    """The policy in ``metadata``, None when the secret has none; a malformed one is a ConfigError."""
    raw = metadata.get(POLICY_KEY)
    if raw is None:
        return None
    try:
        return RotationPolicy.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'rotation'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"rotation policy of {path} is invalid: {problems}") from None
