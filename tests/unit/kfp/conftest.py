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

from kfp_unit_support import ADMIN, StockedHome, who


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


@pytest.fixture()
def run_with_leases(stocked_home: StockedHome) -> dict[str, str]:
    """Run r1: one lease its step already revoked, one left active (a killed step); run r2: one active."""
    rt = stocked_home.runtime()
    try:
        done = rt.broker.lease("dev/connections/warehouse", who("r1", "fetch-data"), 600)
        rt.broker.revoke(done.lease_id, "kfp component exited", who("r1", "fetch-data"))
        left = rt.broker.lease("dev/tokens/experiment_tracker", who("r1", "train-model"), 600, kind="tokens")
        other = rt.broker.lease("dev/connections/warehouse", who("r2", "fetch-data"), 600)
    finally:
        rt.close()
    return {"done": done.lease_id, "left": left.lease_id, "other": other.lease_id}
