"""Fixtures for KFP tests that start processes: a stocked embedded store and its environment.

Every value put here is random per test, so a hit in a scan can only be a leak.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlease.connection import parse_connection
from runlease.runtime import init_home
from runlease.settings import Settings

from kfp_process_support import ADMIN, StockedHome


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
