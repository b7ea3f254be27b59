"""Fixtures for KFP tests that start processes: a stocked embedded store and its environment.

Every value put here is random per test, so a hit in a scan can only be a leak.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runlease.connection import parse_connection
from runlease.models import RunIdentity
from runlease.runtime import Runtime, init_home, open_runtime
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


@pytest.fixture()
def stocked_home(tmp_path: Path) -> Iterator[StockedHome]:
    """A home with the example pipeline's three secrets; ``env`` is what a component process inherits."""
    master_key = base64.b64encode(os.urandom(32)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    env.update(RUNLEASE_HOME=str(tmp_path / "home"), RUNLEASE_MASTER_KEY=master_key, PYTHONUNBUFFERED="1")
    settings = Settings(home=tmp_path / "home", master_key=master_key)
    values = {
        "warehouse": f"WarehousePw-{secrets.token_hex(10)}",
        "tracker": f"tracker-{secrets.token_hex(12)}",
        "registry": f"RegistryPw-{secrets.token_hex(10)}",
    }
    rt, _ = init_home(settings)
    try:
        rt.broker.put("dev/connections/warehouse", parse_connection(
            f"postgres://etl:{values['warehouse']}@warehouse.internal:5432/analytics"), ADMIN)
        rt.broker.put("dev/tokens/experiment_tracker", values["tracker"], ADMIN, kind="tokens")
        rt.broker.put("dev/connections/model_registry", parse_connection(
            f"https://publisher:{values['registry']}@registry.internal:443/models"), ADMIN)
    finally:
        rt.close()
    yield StockedHome(settings, env, values)
