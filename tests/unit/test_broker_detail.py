"""Adapters add their phase to audit events through ``detail``; the broker's own keys still win."""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity
from runlease.runtime import Runtime, init_home
from runlease.settings import Settings

WHO = RunIdentity(orchestrator="airflow", pipeline="training", run_id="r1", task_id="t1", try_number=1)


@pytest.fixture()
def runtime(tmp_path: Path) -> Runtime:
    rt, _ = init_home(Settings(home=tmp_path / "home"))
    rt.broker.put("warehouse", {"conn_type": "postgres", "password": "pw-for-detail-test"},  # runlease: allow secret-assignment (test fixture)
                  RunIdentity(orchestrator="cli", pipeline="admin"))
    yield rt
    rt.close()


def test_lease_detail_is_recorded_and_cannot_override_broker_keys(runtime: Runtime) -> None:
    runtime.broker.lease("warehouse", WHO, ttl=60, detail={"phase": "render", "issuer": "forged"})
    (event,) = runtime.ledger.events(AuditQuery(action="lease"))
    assert event.detail["phase"] == "render"
    assert event.detail["issuer"] == "static"


def test_read_detail_is_recorded(runtime: Runtime) -> None:
    runtime.broker.read("warehouse", WHO, detail={"phase": "parse"})
    (event,) = runtime.ledger.events(AuditQuery(action="read"))
    assert event.detail == {"phase": "parse", "revealed": False}
