"""RunleaseBackend built directly, in this process, against real Airflow classes and a real store."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from runlease.errors import ConfigError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity, SecretPath
from runlease.redact import default_redactor
from runlease.runtime import Runtime, init_home
from runlease.settings import Settings

from runlease_airflow.secrets import RunleaseBackend

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
PASSWORD = "Be/unit-test-pass@word-7731"  # runlease: allow high-entropy-secret (test fixture)
API_KEY = "ak-unit-test-4f2c9e"  # runlease: allow secret-assignment (test fixture)
WAREHOUSE = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": PASSWORD,
             "schema": "analytics", "port": 5432, "extra": {"sslmode": "require", "api_key": API_KEY}}
TASK_ENV = {"AIRFLOW_CTX_DAG_ID": "training_pipeline", "AIRFLOW_CTX_DAG_RUN_ID": "manual__r1",
            "AIRFLOW_CTX_TASK_ID": "train_model", "AIRFLOW_CTX_TRY_NUMBER": "2"}


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RUNLEASE_HOME", "RUNLEASE_ENV", "RUNLEASE_MASTER_KEY", "RUNLEASE_STORE", "RUNLEASE_POLICY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in list(TASK_ENV):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "home"
    runtime, _ = init_home(Settings(home=path))
    runtime.broker.put("dev/connections/warehouse", WAREHOUSE, ADMIN)
    runtime.broker.put("dev/variables/api_token", "tok-unit-test-0099", ADMIN)
    runtime.broker.put("dev/config/sql_alchemy_conn", "sqlite:////tmp/unit.db", ADMIN)
    runtime.close()
    return path


def events(runtime: Runtime, action: str | None = None) -> list:
    return list(runtime.ledger.events(AuditQuery(action=action)))


def test_no_kwargs_uses_runlease_home_and_dev(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_HOME", str(home))
    backend = RunleaseBackend()
    assert backend.config.settings.home == home
    assert backend.config.settings.env == "dev"
    assert backend.get_connection("warehouse").host == "wh.internal"


def test_get_connection_builds_the_airflow_connection(home: Path) -> None:
    from airflow.sdk import Connection

    conn = RunleaseBackend(home=str(home)).get_connection("warehouse")
    assert isinstance(conn, Connection)
    assert (conn.conn_id, conn.conn_type, conn.host, conn.login, conn.schema, conn.port) == (
        "warehouse", "postgres", "wh.internal", "etl", "analytics", 5432)
    assert conn.password == PASSWORD
    assert conn.extra_dejson == {"sslmode": "require", "api_key": API_KEY}


def test_get_conn_value_is_airflow_json(home: Path) -> None:
    from airflow.sdk import Connection

    text = RunleaseBackend(home=str(home)).get_conn_value("warehouse")
    conn = Connection.from_json(text, conn_id="warehouse")
    assert conn.password == PASSWORD and conn.port == 5432


def test_variables_and_config_values(home: Path) -> None:
    backend = RunleaseBackend(home=str(home))
    assert backend.get_variable("api_token") == "tok-unit-test-0099"
    assert backend.get_config("sql_alchemy_conn") == "sqlite:////tmp/unit.db"


def test_unknown_ids_return_none_so_airflow_tries_the_next_backend(home: Path) -> None:
    backend = RunleaseBackend(home=str(home))
    assert backend.get_connection("no_such_conn") is None
    assert backend.get_variable("no_such_var") is None
    assert backend.get_config("no_such_key") is None
    assert backend.get_connection("not a valid name!") is None


def test_lookup_pattern_falls_through_without_touching_the_store(home: Path) -> None:
    backend = RunleaseBackend(home=str(home), connections_lookup_pattern="^rl_")
    before = len(events(backend.state.runtime))
    assert backend.get_connection("warehouse") is None
    assert len(events(backend.state.runtime)) == before
    assert backend.get_variable("api_token") == "tok-unit-test-0099"  # other types unaffected


def test_empty_prefix_disables_a_secret_type(home: Path) -> None:
    backend = RunleaseBackend(home=str(home), variables_prefix="")
    assert backend.get_variable("api_token") is None
    assert backend.get_connection("warehouse") is not None


def test_prefix_with_name_prefix_maps_ids(home: Path) -> None:
    backend = RunleaseBackend(home=str(home), connections_prefix="connections/af_")
    backend.broker.put("dev/connections/af_special", {"conn_type": "http", "host": "special.internal"}, ADMIN)
    assert backend.get_connection("special").host == "special.internal"
    assert backend.get_connection("warehouse") is None  # maps to dev/connections/af_warehouse


def test_environment_kwarg_selects_the_namespace_and_ids_never_cross_it(home: Path) -> None:
    dev = RunleaseBackend(home=str(home))
    dev.broker.put("prod/connections/warehouse", {**WAREHOUSE, "host": "prod-wh.internal"}, ADMIN)
    assert RunleaseBackend(home=str(home), env="prod").get_connection("warehouse").host == "prod-wh.internal"
    assert dev.get_connection("warehouse").host == "wh.internal"
    assert dev.get_connection("prod/connections/warehouse") is None


def test_outside_a_task_a_lookup_is_an_audited_read(home: Path) -> None:
    backend = RunleaseBackend(home=str(home))
    backend.get_connection("warehouse")
    (read,) = events(backend.state.runtime, "read")
    assert read.pipeline == "-" and read.run_id is None
    assert read.detail["phase"] == "outside"
    assert read.principal.startswith("unix:")
    assert backend.broker.ledger.find_leases() == []


def test_inside_a_task_a_lookup_is_a_lease_reused_within_the_try(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    backend = RunleaseBackend(home=str(home), ttl="600")
    assert backend.get_connection("warehouse").password == PASSWORD
    assert backend.get_connection("warehouse").password == PASSWORD
    (lease,) = backend.broker.ledger.find_leases()
    identity = lease.identity
    assert (identity.pipeline, identity.run_id, identity.task_id, identity.try_number) == (
        "training_pipeline", "manual__r1", "train_model", 2)
    (event,) = events(backend.state.runtime, "lease")
    assert event.detail["phase"] == "task" and event.detail["ttl_s"] == 600


def test_rotation_is_seen_by_the_next_lookup(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    backend = RunleaseBackend(home=str(home))
    assert backend.get_connection("warehouse").password == PASSWORD
    backend.broker.put("dev/connections/warehouse", {**WAREHOUSE, "password": "Rotated-pass-0042"}, ADMIN)  # runlease: allow secret-assignment (test fixture)
    assert backend.get_connection("warehouse").password == "Rotated-pass-0042"
    versions = sorted(lease.version for lease in backend.broker.ledger.find_leases())
    assert versions == [1, 2]


def test_a_lease_revoked_elsewhere_is_not_served_from_the_cache(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    backend = RunleaseBackend(home=str(home))
    backend.get_connection("warehouse")
    (first,) = backend.broker.ledger.find_leases()
    backend.broker.revoke(first.lease_id, reason="operator revoked it")
    backend.get_connection("warehouse")
    active = backend.broker.ledger.find_leases(state=LeaseState.ACTIVE)
    assert len(active) == 1 and active[0].lease_id != first.lease_id


def test_cache_can_be_turned_off(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    backend = RunleaseBackend(home=str(home), cache="false")
    backend.get_variable("api_token")
    backend.get_variable("api_token")
    assert len(backend.broker.ledger.find_leases()) == 2


def test_values_reach_airflows_masker_in_every_encoded_form(home: Path) -> None:
    from airflow.sdk.log import redact

    conn = RunleaseBackend(home=str(home)).get_connection("warehouse")
    line = f"raw={PASSWORD} uri={conn.get_uri()} quoted={quote(PASSWORD, safe='')} key={API_KEY}"
    masked = redact(line)
    for form in (PASSWORD, quote(PASSWORD, safe=""), API_KEY):
        assert form not in masked
    assert masked.count("***") >= 4
    assert PASSWORD in default_redactor() and API_KEY in default_redactor()


def test_a_reset_masker_gets_every_value_again_on_the_next_lookup(home: Path) -> None:
    """Outside a task, strings the masker already holds are not registered again -- but a
    ``reset_masker()`` between two lookups (Airflow does it when a process changes role) must not
    leave the value unmasked: the second lookup sees the cleared patterns and registers it again."""
    from airflow.sdk._shared.secrets_masker.secrets_masker import _secrets_masker
    from airflow.sdk.log import redact

    backend = RunleaseBackend(home=str(home))
    backend.get_connection("warehouse")
    assert PASSWORD not in redact(f"x={PASSWORD}")
    _secrets_masker().reset_masker()
    assert PASSWORD in redact(f"x={PASSWORD}")  # the reset really cleared it
    conn = backend.get_connection("warehouse")
    for form in (PASSWORD, quote(PASSWORD, safe=""), conn.get_uri()):
        assert PASSWORD not in redact(f"x={form}") and quote(PASSWORD, safe="") not in redact(f"x={form}")


def test_inside_a_supervised_task_every_lookup_tells_the_supervisor(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a task the supervisor masks the log file and this process cannot see what it holds: protect()
    never skips a string there, even one this process's masker already has."""
    from airflow.sdk.execution_time import task_runner

    from runlease_airflow import masking

    class Comms:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, msg: object) -> None:
            self.sent.append(getattr(msg, "value"))

    comms = Comms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    masking.protect({"conn_type": "postgres", "password": PASSWORD})
    masking.protect({"conn_type": "postgres", "password": PASSWORD})
    assert comms.sent.count(PASSWORD) == 2 and comms.sent.count(quote(PASSWORD, safe="")) == 2


def test_policy_denial_is_authoritative_audited_and_names_no_value(home: Path) -> None:
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    (home / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["airflow:other_dag"]\nenvironments = ["dev"]\n'
        'paths = ["connections/*"]\ncapabilities = ["lease", "read"]\n'
    )
    backend = RunleaseBackend(home=str(home), policy_file=str(home / "policy.toml"))
    with pytest.raises(AirflowSecretsBackendAccessDenied) as caught:
        backend.get_connection("warehouse")
    assert PASSWORD not in str(caught.value)
    denied = [e for e in events(backend.state.runtime) if e.outcome.value == "denied"]
    assert [(e.action, e.path) for e in denied] == [("read", "dev/connections/warehouse")]


@pytest.mark.parametrize("task", [False, True])
def test_a_tampered_secret_row_is_authoritative_and_audited_not_a_fall_through(
    home: Path, monkeypatch: pytest.MonkeyPatch, task: bool
) -> None:
    """Issue #12: an edited row must not make Airflow try the next backend (a decoy there would be served)."""
    import sqlite3

    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    with sqlite3.connect(home / "store.db") as db:
        db.execute("UPDATE secrets SET metadata='{\"issuer\": \"static\"}' WHERE path='dev/connections/warehouse'")
    if task:
        for name, value in TASK_ENV.items():
            monkeypatch.setenv(name, value)
    backend = RunleaseBackend(home=str(home))
    with pytest.raises(AirflowSecretsBackendAccessDenied, match="failed authentication") as caught:
        backend.get_connection("warehouse")
    assert PASSWORD not in str(caught.value)
    errors = [e for e in events(backend.state.runtime) if e.outcome.value == "error"]
    assert [(e.action, e.path, e.detail["table"]) for e in errors] == [
        ("lease" if task else "read", "dev/connections/warehouse", "secrets")]


def test_ids_runlease_does_not_hold_fall_through_even_when_policy_is_enforced(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["airflow:other_dag"]\nenvironments = ["dev"]\n'
        'paths = ["connections/*"]\ncapabilities = ["lease", "read"]\n'
    )
    backend = RunleaseBackend(home=str(home))
    before = len(events(backend.state.runtime))
    assert backend.get_connection("aws_default") is None  # e.g. held by the metadata database instead
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)
    assert backend.get_connection("aws_default") is None
    assert len(events(backend.state.runtime)) == before


def test_a_connection_stored_as_a_uri_string_is_parsed(home: Path) -> None:
    backend = RunleaseBackend(home=str(home))
    backend.broker.put("dev/connections/legacy", "mysql://app:legacy-pass-771@db.legacy:3306/shop", ADMIN)  # runlease: allow connection-uri-credentials (test fixture)
    conn = backend.get_connection("legacy")
    assert (conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema) == (
        "mysql", "db.legacy", "app", "legacy-pass-771", 3306, "shop")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"stoer": "local"}, "'stoer'"),
        ({"store": "nosuch"}, "'store'"),
        ({"env": "Prod!"}, "'env'"),
        ({"connections_prefix": "conns"}, "'connections_prefix'"),
        ({"variables_prefix": "variables/a/b"}, "'variables_prefix'"),
        ({"config_lookup_pattern": "(unclosed"}, "'config_lookup_pattern'"),
        ({"ttl": "0"}, "'ttl'"),
        ({"ttl": "soon"}, "'ttl'"),
        ({"ttl": 10**9}, "'ttl'"),
        ({"store_options": "{not json"}, "'store_options'"),
        ({"cache": "sometimes"}, "'cache'"),
    ],
)
def test_bad_kwargs_fail_at_construction_naming_the_kwarg(home: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunleaseBackend(home=str(home), **kwargs)
    assert named in str(caught.value)
    assert "RunleaseBackend" in str(caught.value)


def test_uninitialized_home_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        RunleaseBackend(home=str(tmp_path / "never-initialized"))
    assert "'home'" in str(caught.value) and "runlease init" in str(caught.value)


def test_unreadable_key_fails_at_construction_naming_the_key_file(home: Path) -> None:
    key_file = home / "master.key"
    key_file.write_text("this is not a key\n")
    with pytest.raises(ConfigError) as caught:
        RunleaseBackend(home=str(home))
    assert "'home'" in str(caught.value) and str(key_file) in str(caught.value)


def test_string_kwargs_from_per_key_overrides_are_coerced(home: Path) -> None:
    backend = RunleaseBackend(home=str(home), ttl="900", cache="false", cache_revalidate_seconds="2.5",
                              store_options="{}")
    assert (backend.config.ttl, backend.config.cache, backend.config.cache_revalidate_seconds) == (900, False, 2.5)


def test_airflow_builds_it_from_workers_section_and_per_key_overrides(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.configuration import get_custom_secret_backend

    monkeypatch.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND", "runlease_airflow.secrets.RunleaseBackend")
    monkeypatch.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", json.dumps({"env": "dev", "ttl": 120}))
    monkeypatch.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__HOME", str(home))
    monkeypatch.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__TTL", "300")
    backend = get_custom_secret_backend(worker_mode=True)
    assert isinstance(backend, RunleaseBackend)
    assert backend.config.settings.home == home
    assert backend.config.ttl == 300  # the per-key override wins over the JSON blob


def test_paths_keep_the_environment(home: Path) -> None:
    backend = RunleaseBackend(home=str(home), env="stage", connections_prefix="connections/af_")
    assert backend.config.path_for("connections", "x") == SecretPath.parse("stage/connections/af_x")
