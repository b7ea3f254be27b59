"""The per-secret rotation state, and the compare-and-swap that makes one rotation at a time.

The state lives in the secret's metadata under ``rotation_state``: the
rotation token (the idempotency key, like AWS's ClientRequestToken), the
last step that completed, the versions involved, when it started and how
it ended. It survives a crash because it is written in the same store
call -- and on the local store, in the same SQLite transaction -- as the
step's effect on the stages and the step's audit event.

**One rotation at a time.** Every state change is
``update_metadata(..., expected={"rotation_state": <the state we read>})``:
a compare-and-swap on the whole record. Claiming a secret swaps "no
rotation running" for "token T at step none"; two claimers both read the
same old record, exactly one swap succeeds, the other gets ConflictError
and re-reads to find T holding the claim. Later steps swap on the record
they read too, so a process that lost the claim (a zombie task) cannot
advance it. Exactness: local store -- read, compare and write under one
``BEGIN IMMEDIATE``; Vault -- a KV check-and-set on the state record; AWS
-- checked just before the tag write (tags have no condition), see
:meth:`runlease.store.aws.AwsSecretsStore.update_metadata`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from runlease.errors import ConfigError
from runlease.models import SecretPath

#: Metadata key of the state record.
STATE_KEY = "rotation_state"


class Step(str, enum.Enum):
    CREATE = "create"
    SET = "set"
    TEST = "test"
    FINISH = "finish"
    RETIRE = "retire"


#: The steps one rotation runs, in order; ``retire`` follows after the grace period.
ROTATION_STEPS: tuple[Step, ...] = (Step.CREATE, Step.SET, Step.TEST, Step.FINISH)
ORDER: dict[Step, int] = {step: i for i, step in enumerate((*ROTATION_STEPS, Step.RETIRE))}


class Status(str, enum.Enum):
    #: Claimed; ``step`` says how far it got. Resumable; blocks other rotations.
    ROTATING = "rotating"
    #: Finished: the new version is CURRENT, the old one PREVIOUS until ``retire``.
    GRACE = "grace"
    #: Retired: the old credential is disabled in the target.
    DONE = "done"
    #: The test step failed (or CURRENT moved underneath); PENDING was discarded.
    FAILED = "failed"


class RotationState(BaseModel):
    """One rotation's progress. No field ever holds a value; ``reason`` is scrubbed text."""

    model_config = ConfigDict(extra="ignore")

    token: str
    rotator: str
    status: Status
    #: The last step that completed (None: claimed, nothing done yet).
    step: Step | None = None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    retired_at: datetime | None = None
    #: CURRENT when the rotation was claimed: what ``finish`` demotes to PREVIOUS.
    base_version: int
    #: The newest version number when claimed: a PENDING version above it was made by this rotation.
    high_version: int
    pending_version: int | None = None
    previous_version: int | None = None
    reason: str | None = None

    def done(self, step: Step) -> bool:
        """Has ``step`` completed (so re-running it is a no-op)?"""
        if step is Step.RETIRE:
            return self.status is Status.DONE
        if self.status in (Status.GRACE, Status.DONE):
            return True
        return self.step is not None and ORDER[self.step] >= ORDER[step]

    def next_step(self) -> Step | None:
        """The next rotation step to run, None once finished (or failed)."""
        if self.status is not Status.ROTATING:
            return None
        if self.step is None:
            return ROTATION_STEPS[0]
        i = ORDER[self.step] + 1
        return ROTATION_STEPS[i] if i < len(ROTATION_STEPS) else None

    def to_raw(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def state_of(path: SecretPath, metadata: dict[str, Any]) -> tuple[RotationState | None, Any]:
    """The parsed state and the raw record it came from (the value a compare-and-swap expects)."""
    raw = metadata.get(STATE_KEY)
    if raw is None:
        return None, None
    try:
        return RotationState.model_validate(raw), raw
    except ValidationError:
        raise ConfigError(
            f"rotation state of {path} (metadata {STATE_KEY!r}) is malformed; "
            "inspect it with `runlease ls` and remove it only if no rotation is running"
        ) from None
