"""Helpers for the KFP adapter's in-process tests (a module with a unique name, so tests can import it)."""

from __future__ import annotations

from dataclasses import dataclass

from runlease.models import RunIdentity
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

ADMIN = RunIdentity(orchestrator="test", pipeline="setup", task_id="put")


@dataclass
class StockedHome:
    """A temp RUNLEASE_HOME holding a warehouse connection and a token, plus their secret parts."""

    settings: Settings
    warehouse_password: str
    tracker_token: str

    @property
    def leaked_values(self) -> list[str]:
        return [self.warehouse_password, self.tracker_token, self.settings.master_key.get_secret_value()]

    def runtime(self) -> Runtime:
        return open_runtime(self.settings)


def who(run_id: str, task: str) -> RunIdentity:
    """A KFP identity in the 'training' pipeline."""
    return RunIdentity(orchestrator="kfp", pipeline="training", run_id=run_id, task_id=task)


def identity_args(run_id: str, task: str) -> dict[str, str]:
    """The identity inputs a component gets from bind_run_identity, already substituted."""
    return {"runlease_run_id": run_id, "runlease_pipeline": "training", "runlease_task": task}
