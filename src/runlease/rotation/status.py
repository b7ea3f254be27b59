"""Which secrets rotate, when they are due, and how their last rotation went.

Shared by ``runlease rotation status`` and the rotation DAG's "what is due"
task, so both agree on what "due" means:

- a rotation that is still running (claimed, not finished) is due now: it
  was interrupted and must be resumed;
- a finished rotation in its grace period is not due: it is *retirable*
  once the grace period is over (and a new rotation waits for that);
- otherwise a secret is due when its CURRENT version is older than the
  policy's interval (a failed rotation leaves CURRENT as it was, so the
  secret stays due and every scheduled run tries -- and alerts -- again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from runlease.errors import ConfigError, RunleaseError
from runlease.models import SecretPath, Stage
from runlease.rotation.policy import POLICY_KEY, RotationPolicy, policy_of
from runlease.rotation.state import RotationState, Status, state_of
from runlease.store.base import SecretStore


@dataclass(frozen=True)
class SecretRotation:
    """One secret's rotation policy and progress (no values)."""

    path: SecretPath
    policy: RotationPolicy | None
    state: RotationState | None
    current_version: int | None
    current_created_at: datetime | None
    #: Why the policy or state could not be read (the secret is then reported due, so it alerts).
    problem: str | None = None

    @property
    def owner(self) -> str:
        return self.policy.owner if self.policy else ""

    def due_at(self) -> datetime | None:
        if self.problem is not None:
            return self.current_created_at
        if self.state is not None and self.state.status is Status.ROTATING:
            return self.state.started_at
        if self.state is not None and self.state.status is Status.GRACE:
            return None
        if self.policy is None or self.current_created_at is None:
            return None
        return self.current_created_at + self.policy.interval

    def retire_at(self) -> datetime | None:
        if self.state is None or self.state.status is not Status.GRACE or self.state.finished_at is None:
            return None
        assert self.policy is not None
        return self.state.finished_at + self.policy.grace

    def is_due(self, now: datetime) -> bool:
        due = self.due_at()
        return (due is not None and due <= now) or (self.problem is not None)

    def is_retirable(self, now: datetime) -> bool:
        retire = self.retire_at()
        return retire is not None and retire <= now

    def last_result(self) -> str:
        if self.problem is not None:
            return f"error: {self.problem}"
        state = self.state
        if state is None:
            return "never rotated"
        if state.status is Status.ROTATING:
            return f"rotating (after {state.step.value if state.step else 'start'})"
        if state.status is Status.GRACE:
            return f"ok, PREVIOUS v{state.previous_version} in grace"
        if state.status is Status.DONE:
            return "ok"
        return f"failed: {state.reason}"


def scan(store: SecretStore, prefix: str = "") -> list[SecretRotation]:
    """Every live secret under ``prefix`` that has a rotation policy."""
    out: list[SecretRotation] = []
    # A store that dates versions from its listing (AWS: write-time tags) saves a history call per secret.
    created_at = getattr(store, "version_created_at", None)
    for info in store.list(prefix):
        if POLICY_KEY not in info.metadata:
            continue
        current = info.stages.get(Stage.CURRENT)
        created = None
        if current is not None:
            created = created_at(info.path, current) if created_at is not None else None
            if created is None:
                created = next((v.created_at for v in store.history(info.path) if v.version == current), None)
        try:
            policy = policy_of(info.path, info.metadata)
            state, _ = state_of(info.path, info.metadata)
        except (ConfigError, RunleaseError) as err:
            out.append(SecretRotation(info.path, None, None, current, created, problem=str(err)))
            continue
        out.append(SecretRotation(info.path, policy, state, current, created))
    return out
