"""RunleaseBackend on the Vault store (a real OpenBao server): every request of a lookup is correlated.

Bug 7: the lease cache's revalidation reads ran outside the broker, so they went
out with the process id instead of the task's X-Correlation-ID (4 of 7 requests
in a 3-lookup trace).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from runlease.audit import correlation
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


# -- Airflow's VaultBackend layout as a backend kwarg ------------------------------------------------

AIRFLOW_PASSWORD = "Af-layout-Pa55word"  # runlease: allow secret-assignment (test fixture)


@pytest.mark.parametrize("kv_version", [2, 1], ids=["kv2", "kv1"])
def test_backend_kwarg_airflow_layout_reads_what_vaultbackend_reads(
        openbao: OpenBao, vault_home: Path, kv_version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A team copies its VaultBackend backend_kwargs (layout part) into RunleaseBackend's ``airflow_layout``."""
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    from runlease.ledger.base import AuditQuery

    mount = openbao.enable_engine("kv", path=f"af-{uuid.uuid4().hex[:8]}", options={"version": str(kv_version)})
    kv = openbao.client().secrets.kv.v2 if kv_version == 2 else openbao.client().secrets.kv.v1
    kv.create_or_update_secret(path="team/conns/reporting", mount_point=mount, secret={
        "conn_type": "postgres", "host": "rep.internal", "login": "bi", "password": AIRFLOW_PASSWORD, "port": "5432"})
    kv.create_or_update_secret(path="team/vars/bucket", mount_point=mount, secret={"value": "s3://reports"})
    layout = {"mount_point": mount, "kv_engine_version": kv_version, "connections_path": "team/conns/",
              "variables_path": "team/vars", "config_path": None}
    theirs = VaultBackend(url=openbao.url, token=openbao.root_token, **layout)
    for key, value in TASK_ENV.items():
        monkeypatch.setenv(key, value)
    # as airflow.cfg passes it: JSON text (a version written as text is understood too)
    ours = RunleaseBackend(home=str(vault_home), airflow_layout=json.dumps({**layout, "kv_engine_version": str(kv_version)}))

    a, b = theirs.get_connection("reporting"), ours.get_connection("reporting")
    fields = ("conn_type", "host", "login", "password", "schema", "port")
    assert [getattr(b, f) for f in fields] == [getattr(a, f) for f in fields]
    assert b.password == AIRFLOW_PASSWORD
    assert ours.get_variable("bucket") == theirs.get_variable("bucket") == "s3://reports"
    # runlease's own secrets are still served, and take precedence over the layout
    assert ours.get_connection("warehouse").password == CONN["password"]
    assert ours.get_connection("missing") is None and ours.get_config("anything") is None
    # leased to the task try and audited, like any runlease secret
    events = list(ours.state.runtime.ledger.events(AuditQuery(path="dev/connections/reporting")))
    assert [e.action for e in events] == ["lease"] and events[0].run_id == "manual__r1"
    assert AIRFLOW_PASSWORD not in json.dumps([e.model_dump(mode="json") for e in events])


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"airflow_layout": {"url": "http://vault:8200"}}, "unknown key 'url'"),
    ({"airflow_layout": {"kv_engine_version": 3}}, "'airflow_layout.kv_engine_version'"),
    ({"airflow_layout": {"mount_point": "a", "mount": "b"}}, "name the same setting"),
    ({"airflow_layout": "{not json"}, "must be a JSON object"),
    ({"airflow_layout": {}, "store": "local"}, "only for the Vault store"),
])
def test_backend_kwarg_airflow_layout_errors_name_the_kwarg(vault_home: Path, kwargs: dict, named: str) -> None:
    from runlease.errors import ConfigError

    with pytest.raises(ConfigError, match="backend_kwargs") as err:
        RunleaseBackend(home=str(vault_home), **kwargs)
    assert named in str(err.value)


def test_backend_kwarg_and_store_option_airflow_layout_exclude_each_other(
        openbao: OpenBao, vault_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runlease.errors import ConfigError

    options = {**json.loads(os.environ["RUNLEASE_STORE_OPTIONS"]), "airflow_layout": {"env": "dev"}}
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(options))
    with pytest.raises(ConfigError, match="set it in one place"):
        RunleaseBackend(home=str(vault_home), airflow_layout={"mount_point": "secret"})


def test_construction_prepares_the_vault_client_without_a_request(
        openbao: OpenBao, vault_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hvac loads and the HTTP client is built when the backend is constructed; no login, no request yet."""
    import subprocess
    import sys

    from runlease.store import vault_auth

    monkeypatch.setattr(vault_auth, "_sessions", {})  # as in a new process
    mark = openbao.audit_mark()
    backend = RunleaseBackend(home=str(vault_home))
    session = backend.broker.store.session
    assert session._client is not None and session.logins == 0
    assert openbao.requests(mark) == []
    assert backend.get_connection("warehouse").login == "etl"
    assert session.logins == 1
    # and in a fresh interpreter: constructing the backend is what imports the SDK
    code = ("import sys\nfrom runlease_airflow.secrets import RunleaseBackend\nbefore = 'hvac' in sys.modules\n"
            f"RunleaseBackend(home={str(vault_home)!r})\nprint(before, 'hvac' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]


def test_without_hvac_the_backend_fails_at_construction_naming_the_extra(
        vault_home: Path, monkeypatch: pytest.MonkeyPatch, mocker: Any) -> None:
    """Fake (pytest-mock): hvac is installed here, so its absence is simulated in sys.modules."""
    import sys

    from runlease.errors import ConfigError
    from runlease.store import vault_auth

    monkeypatch.setattr(vault_auth, "_sessions", {})
    mocker.patch.dict(sys.modules, {"hvac": None})  # `import hvac` raises ImportError
    with pytest.raises(ConfigError, match=r"runlease\[vault\]"):
        RunleaseBackend(home=str(vault_home))
