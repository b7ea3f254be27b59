"""Fixtures for the KFP adapter's in-process tests: a real embedded store in a temp home."""

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

from kfp_unit_support import ADMIN, StockedHome


@pytest.fixture()
def stocked_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StockedHome]:
    master_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", master_key)
    for name in ("RUNLEASE_KFP_RUN_ID", "RUNLEASE_KFP_PIPELINE", "RUNLEASE_KFP_TASK",
                 "RUNLEASE_KFP_NAMESPACE", "RUNLEASE_KFP_SERVICE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    password = f"WarehousePw-{secrets.token_hex(10)}"
    token = f"tracker-{secrets.token_hex(12)}"
    rt, _ = init_home(settings)
    try:
        rt.broker.put("dev/connections/warehouse",
                      parse_connection(f"postgres://etl:{password}@warehouse.internal:5432/analytics"), ADMIN)
        rt.broker.put("dev/tokens/experiment_tracker", token, ADMIN, kind="tokens")
    finally:
        rt.close()
    yield StockedHome(settings, password, token)
