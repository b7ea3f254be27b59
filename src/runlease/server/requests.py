"""The JSON bodies ``runlease serve`` accepts (v1): strict (unknown fields are refused), bounded.

``claims`` is everything a caller may *say* about the run it works for; the
principal is deliberately not among them (it is the verified token subject).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runlease.models import Stage


class RunClaims(BaseModel):
    """What the caller says about the run it works for: recorded, never trusted for ownership."""

    model_config = ConfigDict(extra="forbid")

    orchestrator: str | None = Field(default=None, max_length=64)
    pipeline: str | None = Field(default=None, max_length=250)
    run_id: str | None = Field(default=None, max_length=250)
    task_id: str | None = Field(default=None, max_length=250)
    try_number: int | None = Field(default=None, ge=0)
    map_index: int | None = None


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(min_length=1, max_length=400)
    kind: str = Field(default="connections", max_length=32)
    ttl: float | None = None
    stage: Stage = Stage.CURRENT
    claims: RunClaims = Field(default_factory=RunClaims)


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl: float | None = None


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="revoked through runlease serve", max_length=200)


class RevokeRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=250)
    pipeline: str | None = Field(default=None, max_length=250)
    task_id: str | None = Field(default=None, max_length=250)
    reason: str = Field(default="run ended", max_length=200)


class VerifyKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(min_length=1, max_length=400)
    presented: str = Field(max_length=16_384)
    kind: str = Field(default="tokens", max_length=32)
