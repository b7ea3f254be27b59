"""API-server mode pieces in this process: the request context, identities without a task token, the 403.

The whole chain (real ``airflow api-server``, LocalExecutor, tasks in another
mount namespace) is tested in test_api_server_mode.py; these are the cases that
chain does not reach cheaply: a request with no task token (UI, REST API), the
request scope reaching a sync route's worker thread, the state-route parsing,
and the worker-side masking of encoded forms.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings

from runlease_airflow import api_server
from runlease_airflow.api_server import (
    STATE_ROUTE,
    ExecutionApiAccessDenied,
    ExecutionApiMiddleware,
    reported_state,
)
from runlease_airflow.errors import AirflowSecretsBackendAccessDenied
from runlease_airflow.secrets import RunleaseBackend
from runlease_airflow.ti_identity import API_SERVER_PIPELINE, PHASE_API

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
POLICY = """\
[[grant]]
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
description      = "DAG code, only when the API server proved which DAG it is"
principals       = ["airflow:*"]
require_verified = true
environments     = ["dev"]
paths            = ["connections/*"]
capabilities     = ["lease", "read"]

[[grant]]
description  = "requests without a task token (UI, REST API) may read one connection"
principals   = ["airflow:api-server"]
environments = ["dev"]
paths        = ["connections/ui_visible"]
capabilities = ["read"]
"""


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RUNLEASE_HOME", "RUNLEASE_ENV", "RUNLEASE_MASTER_KEY", "RUNLEASE_STORE", "RUNLEASE_POLICY_FILE"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "home"
    runtime, _ = init_home(Settings(home=path))
    runtime.broker.put("dev/connections/ui_visible", {"conn_type": "http", "password": "Ui-visible-pw-3371"}, ADMIN)  # runlease: allow secret-assignment (test fixture)
    runtime.broker.put("dev/connections/warehouse", {"conn_type": "postgres", "password": "Wh-pw-99120"}, ADMIN)  # runlease: allow secret-assignment (test fixture)
    runtime.close()
    (path / "policy.toml").write_text(POLICY)
    return path


@pytest.fixture()
def in_api_request() -> object:
    """As inside the API server's middleware, for a request that carries no Execution API token."""
    reset = api_server._request_scope.set({"type": "http", "path": "/api/v2/connections/x"})
    yield
    api_server._request_scope.reset(reset)


def test_a_request_without_a_task_token_is_the_api_server_unverified(home: Path, in_api_request: object) -> None:
    backend = RunleaseBackend(home=str(home))
    assert backend.get_connection("ui_visible").password == "Ui-visible-pw-3371"
    # The require_verified grant for airflow:* does not match it; nothing else grants the warehouse.
    with pytest.raises(ExecutionApiAccessDenied) as denied:
        backend.get_connection("warehouse")
    assert isinstance(denied.value, AirflowSecretsBackendAccessDenied)
    assert denied.value.status_code == 403 and "warehouse" in str(denied.value)
    runtime = open_runtime(Settings(home=home))
    try:
        read, refused = [e for e in runtime.ledger.events(AuditQuery()) if e.pipeline == API_SERVER_PIPELINE]
    finally:
        runtime.close()
    assert (read.action, read.outcome.value, read.detail["phase"]) == ("read", "ok", PHASE_API)
    assert (refused.path, refused.outcome.value) == ("dev/connections/warehouse", "denied")
    assert "verified" not in read.detail and "verified" not in refused.detail


def test_a_tampered_row_met_in_the_api_server_is_a_403_denial_not_a_500(home: Path, in_api_request: object) -> None:
    """Issue #12 in API-server mode: an edited secret row must reach the task as a denial (403 ->
    PERMISSION_DENIED -> AirflowSecretsBackendAccessDenied, no fall-through), never as a server error."""
    import sqlite3

    from runlease_airflow.api_server import ExecutionApiTampered

    with sqlite3.connect(home / "store.db") as db:
        db.execute("UPDATE secrets SET metadata='{\"issuer\": \"static\"}' WHERE path='dev/connections/ui_visible'")
    backend = RunleaseBackend(home=str(home))
    with pytest.raises(ExecutionApiTampered) as refused:
        backend.get_connection("ui_visible")
    assert isinstance(refused.value, AirflowSecretsBackendAccessDenied)
    assert refused.value.status_code == 403 and refused.value.detail["reason"] == "permission_denied"
    assert "Ui-visible-pw-3371" not in str(refused.value)


def test_a_claimed_task_context_outside_the_api_server_never_matches_require_verified(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process mode: the identity comes from AIRFLOW_CTX_* -- a claim -- and the policy refuses it.
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "any_dag")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "r1")
    with pytest.raises(AirflowSecretsBackendAccessDenied) as denied:
        RunleaseBackend(home=str(home)).get_connection("warehouse")
    assert not isinstance(denied.value, ExecutionApiAccessDenied)  # no HTTP status outside the API server


def test_the_request_scope_reaches_a_sync_route_after_a_dependency_wrote_to_it() -> None:
    """What API-server mode rests on: JWTBearer caches the validated token on the scope *after* the
    root middleware ran; the route body runs in a worker thread and must see that same scope."""
    app = FastAPI()

    async def validated_token(request: Request) -> None:
        request.scope["ti_token"] = "validated-by-airflow"  # runlease: allow secret-assignment (test fixture)

    @app.get("/execution/probe", dependencies=[Depends(validated_token)])
    def probe() -> dict:
        scope = api_server._request_scope.get()
        return {"token": None if scope is None else scope.get("ti_token")}

    @app.get("/execution/deny")
    def deny() -> dict:
        raise ExecutionApiAccessDenied("runlease policy denies airflow:dag_a:t lease on dev/connections/b_db")

    app.add_middleware(ExecutionApiMiddleware)
    with TestClient(app) as client:
        assert client.get("/execution/probe").json() == {"token": "validated-by-airflow"}  # runlease: allow secret-assignment (test fixture)
        response = client.get("/execution/deny")
    assert response.status_code == 403
    assert response.json()["detail"]["reason"] == "permission_denied"
    assert api_server._request_scope.get() is None


def test_the_state_route_and_its_body() -> None:
    ti = "01a2432d-ad38-791c-a513-acad4432fa90"
    assert STATE_ROUTE.match(f"/execution/task-instances/{ti}/state")
    assert not STATE_ROUTE.match(f"/execution/task-instances/{ti}/run")
    assert not STATE_ROUTE.match(f"/api/v2/task-instances/{ti}/state")
    assert reported_state(b'{"state": "up_for_retry", "end_date": "2026-01-01T00:00:00Z"}') == "up_for_retry"
    assert reported_state(b"not json") is None and reported_state(b"[1]") is None and reported_state(b"") is None


def test_worker_masking_registers_every_form_of_a_fetched_connection_and_variable() -> None:
    from airflow.sdk import Connection
    from airflow.sdk.log import redact

    from runlease_airflow.worker_masking import _protect

    password, api_key, note = "Wk/unit-pass@9k2z", "ak-wk-unit-58f1e2", "plain-note-value-6621"  # runlease: allow high-entropy-secret secret-assignment (test fixture)
    _protect(Connection(conn_id="c", conn_type="postgres", password=password,
                        extra=f'{{"api_key": "{api_key}", "sslmode": "require"}}'))
    _protect(note)
    for text in (password, quote(password, safe=""), quote_plus(password), api_key, note):
        assert redact(f"x {text} y") == "x *** y", text
    assert redact("sslmode=require") == "sslmode=require"  # not a sensitive extra: left readable
