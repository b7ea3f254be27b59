"""RunleaseHook in this process against a real store: explicit leases, early release, key verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.errors import RunleaseError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity, Stage

from runlease_airflow.hooks.runlease import RunleaseHook

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
TASK_ENV = {"AIRFLOW_CTX_DAG_ID": "serving", "AIRFLOW_CTX_DAG_RUN_ID": "manual__h1",
            "AIRFLOW_CTX_TASK_ID": "check_clients", "AIRFLOW_CTX_TRY_NUMBER": "1"}
OLD_KEY = "client-key-old-5a1b2c3d"
NEW_KEY = "client-key-new-9e8f7a6b"


@pytest.fixture()
def hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunleaseHook:
    from runlease.runtime import init_home
    from runlease.settings import Settings

    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    runtime, _ = init_home(Settings(home=tmp_path / "home"))
    runtime.broker.put("dev/connections/registry", {"conn_type": "http", "host": "registry.internal",
                                                    "login": "pub", "password": "registry-pass-3141"}, ADMIN)  # runlease: allow secret-assignment (test fixture)
    runtime.broker.put("dev/tokens/client_api_key", OLD_KEY, ADMIN)
    runtime.broker.put("dev/tokens/client_api_key", NEW_KEY, ADMIN)  # old CURRENT becomes PREVIOUS
    runtime.close()
    return RunleaseHook(home=str(tmp_path / "home"))


def test_lease_with_its_own_ttl_is_bound_to_the_task_try(hook: RunleaseHook) -> None:
    lease = hook.lease("registry", ttl=120)
    assert lease.value["password"] == "registry-pass-3141"
    who = lease.identity
    assert (who.pipeline, who.task_id, who.try_number) == ("serving", "check_clients", 1)
    assert int((lease.expires_at - lease.issued_at).total_seconds()) == 120


def test_get_leased_connection_and_early_release(hook: RunleaseHook) -> None:
    from airflow.sdk import Connection

    conn = hook.get_leased_connection("registry", ttl=60)
    assert isinstance(conn, Connection) and conn.host == "registry.internal"
    (lease,) = hook.backend.broker.ledger.find_leases()
    assert hook.revoke(lease.lease_id) is True
    assert hook.backend.broker.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED
    assert hook.revoke(lease.lease_id) is False


def test_lease_outside_a_task_is_refused(hook: RunleaseHook, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TASK_ENV:
        monkeypatch.delenv(name)
    with pytest.raises(RunleaseError, match="while a task runs"):
        hook.lease("registry")


def test_verify_presented_key_accepts_current_and_previous_only(hook: RunleaseHook) -> None:
    broker = hook.backend.broker
    assert broker.store.resolve(hook.path("client_api_key", "tokens"), Stage.PREVIOUS).version == 1
    assert hook.verify_presented_key("client_api_key", NEW_KEY) is True
    assert hook.verify_presented_key("client_api_key", OLD_KEY) is True
    assert hook.verify_presented_key("client_api_key", "client-key-forged-000000") is False
    verifies = [e for e in broker.ledger.events(AuditQuery(action="verify"))]
    assert [(e.detail["matched"], e.outcome.value) for e in verifies] == [
        ("CURRENT", "ok"), ("PREVIOUS", "ok"), (None, "denied")]
    for event in verifies:
        assert OLD_KEY not in event.model_dump_json() and NEW_KEY not in event.model_dump_json()
