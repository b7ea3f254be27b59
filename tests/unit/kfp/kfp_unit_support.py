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
