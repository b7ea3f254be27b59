"""Helpers for the KFP tests that start processes (a module with a unique name, so tests can import it).

Every value put here is random per test, so a hit in a scan can only be a leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runlease.models import RunIdentity
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

ADMIN = RunIdentity(orchestrator="test", pipeline="setup", task_id="put")
REPO = Path(__file__).resolve().parents[3]


@dataclass
class StockedHome:
    settings: Settings
    env: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)

    @property
    def leaked_values(self) -> list[str]:
        """Every string that must never show up: the secret parts of each value and the KEK."""
        return [*self.values.values(), self.env["RUNLEASE_MASTER_KEY"]]

    def runtime(self) -> Runtime:
        return open_runtime(self.settings)


def assert_no_leak(home: StockedHome, *texts: str, where: str = "output") -> None:
    for value in home.leaked_values:
        for text in texts:
            assert value not in text, f"a stored secret leaked into {where}"
