"""RunleaseBackend on the Vault store (a real OpenBao server): every request of a lookup is correlated.

Bug 7: the lease cache's revalidation reads ran outside the broker, so they went
out with the process id instead of the task's X-Correlation-ID (4 of 7 requests
in a 3-lookup trace).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from runlease import correlation
from runlease.models import RunIdentity
from runlease.runtime import init_home
from runlease.settings import Settings
from runlease_airflow.secrets import RunleaseBackend
from support.openbao import OpenBao

TASK_ENV = {"AIRFLOW_CTX_DAG_ID": "training_pipeline", "AIRFLOW_CTX_DAG_RUN_ID": "manual__r1",
            "AIRFLOW_CTX_TASK_ID": "train_model", "AIRFLOW_CTX_TRY_NUMBER": "2"}
CONN = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": "pw-vault-backend"}  # runlease: allow secret-assignment (test fixture)


@pytest.fixture
def vault_home(openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    token = tmp_path / "token"
    token.write_text(openbao.root_token)
    options = {"address": openbao.url, "prefix": f"rl-{uuid.uuid4().hex[:8]}", "auth": {"token_file": str(token)}}
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(options))
    home = tmp_path / "home"
    rt, _ = init_home(Settings(home=home))
    rt.broker.put("dev/connections/warehouse", CONN, RunIdentity(orchestrator="cli", pipeline="tests"))
    rt.close()
    return home


def test_every_request_of_task_lookups_carries_the_task_correlation_id(
        openbao: OpenBao, vault_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TASK_ENV.items():
        monkeypatch.setenv(key, value)
    backend = RunleaseBackend(home=str(vault_home))
    mark = openbao.audit_mark()
    for _ in range(3):  # the first leases, the next two hit the cache and revalidate against the store
        assert backend.get_connection("warehouse").password == CONN["password"]
    sent = openbao.requests(mark)
    task = RunIdentity(orchestrator="airflow", pipeline="training_pipeline", run_id="manual__r1",
                       task_id="train_model", try_number=2)
    assert len(sent) >= 4
    assert {openbao.correlation(r) for r in sent} == {correlation.correlation_id(task)}


def test_lookups_outside_a_task_are_correlated_too(openbao: OpenBao, vault_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TASK_ENV:
        monkeypatch.delenv(key, raising=False)
    backend = RunleaseBackend(home=str(vault_home))
    mark = openbao.audit_mark()
    assert backend.get_connection("warehouse").login == "etl"
    ids = {openbao.correlation(r) for r in openbao.requests(mark)}
    assert len(ids) == 1 and ids != {correlation.process_id()}


def test_one_request_per_lookup_outside_a_task_and_two_for_a_first_lease(
        openbao: OpenBao, vault_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"Is it held?" and the broker's resolve share one state read (the store's read scope)."""
    for key in TASK_ENV:
        monkeypatch.delenv(key, raising=False)
    backend = RunleaseBackend(home=str(vault_home))
    assert backend.get_connection("warehouse").login == "etl"  # logs in, caches the (immutable) version
    mark = openbao.audit_mark()
    for _ in range(10):
        assert backend.get_connection("warehouse").login == "etl"
    sent = openbao.requests(mark)
    assert len(sent) == 10 and all("/_state/dev/connections/warehouse" in r["path"] for r in sent)
    for key, value in TASK_ENV.items():
        monkeypatch.setenv(key, value)
    mark = openbao.audit_mark()
    assert backend.get_connection("warehouse").password == CONN["password"]  # a lease: state read + value in cache
    assert len(openbao.requests(mark)) == 1
