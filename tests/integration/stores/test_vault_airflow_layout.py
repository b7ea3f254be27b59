"""Secrets written for Airflow's VaultBackend layout, read by runlease (opt-in, read-only) on OpenBao.

The reference is Airflow's own ``VaultBackend`` (apache-airflow-providers-hashicorp)
pointed at the same server: for every secret, RunleaseBackend must hand out the
same connection / variable, leased and audited.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from runlease.errors import ConflictError, InvalidValueError, SecretNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.runtime import init_home
from runlease.settings import Settings
from runlease.store.vault import VaultStore
from store_support import vault_options
from support.openbao import OpenBao, unique

URI_PASSWORD = "Uri-Pa55word-from-airflow"  # runlease: allow secret-assignment (test fixture)
FIELD_PASSWORD = "Field-Pa55word-from-airflow"  # runlease: allow secret-assignment (test fixture)
SMTP_URI = f"smtp://mailer:{URI_PASSWORD}@mail.internal:587"
WAREHOUSE = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": FIELD_PASSWORD,
             "schema": "analytics", "port": "5432", "extra": json.dumps({"sslmode": "require"})}
#: Airflow's Connection takes ``description``; VaultBackend passes every field of the secret to it.
DESCRIBED = {"conn_type": "http", "host": "api.internal", "login": "svc", "password": FIELD_PASSWORD,
             "description": "the model registry's API, owned by ml-platform"}
BAD_PORT = {"conn_type": "postgres", "host": "db", "password": FIELD_PASSWORD, "port": "fifty"}
BAD_EXTRA = {"conn_type": "postgres", "host": "db", "password": FIELD_PASSWORD, "extra": "not json " + FIELD_PASSWORD}
UNKNOWN_FIELD = {"conn_type": "postgres", "host": "db", "password": FIELD_PASSWORD, "passwrod": FIELD_PASSWORD}
RUN = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="r1", task_id="load", try_number=1)


def write_airflow_secrets(bao: OpenBao, mount: str, version: int) -> None:
    """What a team using Airflow's VaultBackend has in Vault today."""
    c = bao.client()
    secrets = {"connections/smtp_default": {"conn_uri": SMTP_URI}, "connections/warehouse": WAREHOUSE,
               "connections/described": DESCRIBED, "connections/bad_port": BAD_PORT,
               "connections/bad_extra": BAD_EXTRA, "connections/unknown_field": UNKNOWN_FIELD,
               "variables/bucket": {"value": "s3://models/prod"}, "variables/broken": {"val": "x"},
               "config/sql_alchemy_conn": {"value": "sqlite:////tmp/x.db"}}
    for path, data in secrets.items():
        if version == 2:
            c.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)
        else:
            c.secrets.kv.v1.create_or_update_secret(path=path, secret=data, mount_point=mount)


@pytest.fixture(params=[2, 1], ids=["kv2", "kv1"])
def layout(request: pytest.FixtureRequest, openbao: OpenBao) -> dict[str, Any]:
    version = request.param
    mount = openbao.enable_engine("kv", path=unique("airflow"), options={"version": str(version)})
    write_airflow_secrets(openbao, mount, version)
    return {"env": "prod", "mount": mount, "kv_version": version}


def test_runlease_reads_airflows_layout(openbao: OpenBao, layout: dict[str, Any], tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(openbao, tmp_path, airflow_layout=layout))
    smtp, warehouse = SecretPath.parse("prod/connections/smtp_default"), SecretPath.parse("prod/connections/warehouse")
    assert store.resolve(smtp).version == 1 and store.get(smtp).value == SMTP_URI
    assert store.get(warehouse).value == {**WAREHOUSE, "port": 5432, "extra": {"sslmode": "require"}}
    assert store.get(SecretPath.parse("prod/variables/bucket")).value == "s3://models/prod"
    assert store.get(SecretPath.parse("prod/config/sql_alchemy_conn")).value == "sqlite:////tmp/x.db"
    assert store.info(smtp).stages == {Stage.CURRENT: 1}
    assert [v.version for v in store.history(smtp)] == [1]
    assert {str(i.path) for i in store.list("prod/")} >= {str(smtp), str(warehouse), "prod/variables/bucket"}
    # only CURRENT, only the configured environment
    for missing in (lambda: store.resolve(smtp, Stage.PENDING), lambda: store.get(SecretPath.parse(
            "dev/connections/smtp_default")), lambda: store.get(SecretPath.parse("prod/connections/nope"))):
        with pytest.raises(SecretNotFoundError):
            missing()
    with pytest.raises(InvalidValueError, match="prod/variables/broken.*no 'value' field") as caught:
        store.get(SecretPath.parse("prod/variables/broken"))
    assert "x" not in str(caught.value).split("no 'value' field")[1][:3]


def test_a_description_is_read_and_dropped_as_import_does(openbao: OpenBao, layout: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """A connection carrying ``description`` (VaultBackend hands it to Connection) is read, minus the description."""
    store = VaultStore.from_options(vault_options(openbao, tmp_path, airflow_layout=layout))
    value = store.get(SecretPath.parse("prod/connections/described")).value
    assert value == {"conn_type": "http", "host": "api.internal", "login": "svc", "password": FIELD_PASSWORD,
                     "schema": None, "port": None, "extra": {}}


@pytest.mark.parametrize(("name", "why"), [("bad_port", "port int_parsing"), ("bad_extra", "extra"),
                                           ("unknown_field", "unknown connection fields")])
def test_a_connection_runlease_put_would_refuse_is_refused_naming_the_field_not_the_value(
        openbao: OpenBao, layout: dict[str, Any], tmp_path: Path, name: str, why: str) -> None:
    """The same checks as ``runlease put`` (before, a port "fifty" or a non-JSON extra passed through)."""
    store = VaultStore.from_options(vault_options(openbao, tmp_path, airflow_layout=layout))
    with pytest.raises(InvalidValueError, match=f"prod/connections/{name}.*malformed.*{why}") as caught:
        store.get(SecretPath.parse(f"prod/connections/{name}"))
    assert FIELD_PASSWORD not in str(caught.value) and "fifty" not in str(caught.value)


def test_without_the_option_nothing_is_read_from_airflows_layout(openbao: OpenBao, layout: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    with pytest.raises(SecretNotFoundError):
        store.get(SecretPath.parse("prod/connections/smtp_default"))


def test_leased_audited_and_never_written(openbao: OpenBao, layout: dict[str, Any], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(home=tmp_path / "home", store="vault", env="prod",
                        store_options=vault_options(openbao, tmp_path, airflow_layout=layout))
    rt, _ = init_home(settings)
    mark = openbao.audit_mark()
    try:
        lease = rt.broker.lease("smtp_default", RUN, 600)
        assert lease.value == SMTP_URI and lease.version == 1 and lease.issuer == "static"
        [event] = rt.ledger.events(AuditQuery(action="lease"))
        assert event.path == "prod/connections/smtp_default" and event.run_id == "r1"
        assert rt.broker.revoke(lease.lease_id)
        # runlease never writes over (or shadows) a secret it serves from Airflow's layout
        with pytest.raises(ConflictError, match="read-only from Airflow's VaultBackend layout"):
            rt.broker.put("prod/connections/smtp_default", "smtp://mailer:new@mail.internal:587",  # runlease: allow connection-uri-credentials (test fixture)
                          RunIdentity(orchestrator="cli", pipeline="ops"))
        # other paths are runlease's as usual
        rt.broker.put("prod/connections/fresh", "smtp://mailer:new@mail.internal:587",  # runlease: allow connection-uri-credentials (test fixture)
                      RunIdentity(orchestrator="cli", pipeline="ops"))
        assert rt.broker.lease("fresh", RUN, 600).version == 1
    finally:
        rt.close()
    writes = [r for r in openbao.requests(mark) if r["path"].startswith(layout["mount"] + "/")
              and r["operation"] not in ("read", "list")]
    assert writes == []  # read-only: nothing was ever written to Airflow's paths
    if layout["kv_version"] == 2:
        meta = openbao.client().secrets.kv.v2.read_secret_metadata(path="connections/smtp_default",
                                                                   mount_point=layout["mount"])
        assert meta["data"]["current_version"] == 1
    for secret in (URI_PASSWORD, FIELD_PASSWORD):
        assert secret not in caplog.text


def test_same_answers_as_airflows_own_vault_backend(openbao: OpenBao, layout: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Switching backends changes nothing a task sees: the same connection and variables."""
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    from runlease_airflow.secrets import RunleaseBackend

    theirs = VaultBackend(url=openbao.url, token=openbao.root_token, mount_point=layout["mount"],
                          kv_engine_version=layout["kv_version"])
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(vault_options(openbao, tmp_path, airflow_layout=layout)))
    home = tmp_path / "home"
    init_home(Settings(home=home))[0].close()
    ours = RunleaseBackend(home=str(home), env="prod")
    for conn_id in ("smtp_default", "warehouse", "described"):
        a, b = theirs.get_connection(conn_id), ours.get_connection(conn_id)
        fields = ("conn_type", "host", "login", "password", "schema", "port")
        # (a URI without a path: Airflow's parser says schema "", runlease's connection codec None)
        assert [getattr(b, f) or None for f in fields] == [getattr(a, f) or None for f in fields], conn_id
        assert b.extra_dejson == a.extra_dejson
    assert ours.get_variable("bucket") == theirs.get_variable("bucket") == "s3://models/prod"
    assert ours.get_config("sql_alchemy_conn") == theirs.get_config("sql_alchemy_conn")
    assert ours.get_connection("nope") is None and theirs.get_connection("nope") is None
