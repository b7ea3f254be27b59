"""``runlease import vault:`` / ``aws:``: Airflow's own backend layouts, listed and imported.

Vault is the session's real OpenBao server, AWS is moto's server over HTTP.
The secrets are written the way a team using Airflow's VaultBackend /
SecretsManagerBackend has them, and the reference for every imported value is
Airflow's own backend reading the same secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.runtime import open_runtime
from runlease.settings import Settings
from support.moto_server import MotoServer
from support.openbao import OpenBao, unique
from support.postgres import free_port

URI_PASSWORD = "Imp0rt-Uri-Pa55"  # runlease: allow secret-assignment (test fixture)
FIELD_PASSWORD = "Imp0rt-Field-Pa55"  # runlease: allow secret-assignment (test fixture)
VAR_SECRET = "Imp0rt-Var-T0ken"  # runlease: allow secret-assignment (test fixture)
BROKEN_SECRET = "Imp0rt-Broken-Val"  # runlease: allow secret-assignment (test fixture)
VALUES = (URI_PASSWORD, FIELD_PASSWORD, VAR_SECRET, BROKEN_SECRET)
FIELDS = ("conn_type", "host", "login", "password", "schema", "port")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(h))
    for name in ("RUNLEASE_MASTER_KEY", "RUNLEASE_STORE", "RUNLEASE_STORE_OPTIONS", "RUNLEASE_ENV"):
        monkeypatch.delenv(name, raising=False)
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    return h


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def report(*args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    code, out = run(*args, "--format", "json")
    assert not any(v in out for v in VALUES), out
    rows = json.loads(out) if out.strip().startswith("[") else []
    return code, {f"{r['kind']}/{r['name']}": r for r in rows}, out


def stored(home: Path, path: str) -> Any:
    rt = open_runtime(Settings(home=home))
    try:
        from runlease.models import SecretPath

        return rt.store.get(SecretPath.parse(path)).value
    finally:
        rt.close()


def as_airflow_connection(conn_id: str, value: Any) -> Any:
    """What a task would get from runlease's stored value (the Airflow Connection built from it)."""
    from airflow.models.connection import Connection

    if isinstance(value, str):
        return Connection(conn_id=conn_id, uri=value)
    return Connection.from_json(json.dumps(value), conn_id=conn_id)


def assert_same_connection(ours: Any, theirs: Any) -> None:
    # (a URI without a path: Airflow's parser says schema "", runlease's connection codec None)
    assert [getattr(ours, f) or None for f in FIELDS] == [getattr(theirs, f) or None for f in FIELDS]
    assert ours.extra_dejson == theirs.extra_dejson


# --- Vault: Airflow's VaultBackend layout -------------------------------------------------------

WAREHOUSE = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": FIELD_PASSWORD,
             "schema": "analytics", "port": "5432", "extra": json.dumps({"sslmode": "require"})}


@pytest.fixture(params=[2, 1], ids=["kv2", "kv1"])
def vault_layout(request: pytest.FixtureRequest, openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Secrets as a team using Airflow's VaultBackend wrote them (`vault kv put`, here hvac as root)."""
    version = request.param
    mount = openbao.enable_engine("kv", path=unique("afimport"), options={"version": str(version)})
    c = openbao.client()
    secrets = {
        "connections/smtp_default": {"conn_uri": f"smtp://mailer:{URI_PASSWORD}@mail.internal:587"},  # runlease: allow connection-uri-credentials (test fixture)
        "connections/warehouse": WAREHOUSE,
        "connections/team/nested": {"conn_uri": "http://h"},
        "variables/bucket": {"value": VAR_SECRET},
        "variables/broken": {"val": BROKEN_SECRET},
        "config/sql_alchemy_conn": {"value": "sqlite:////tmp/x.db"},
    }
    kv = c.secrets.kv.v2 if version == 2 else c.secrets.kv.v1
    for path, data in secrets.items():
        kv.create_or_update_secret(path=path, secret=data, mount_point=mount)
    if version == 2:  # soft-deleted: still LISTed by KV v2, but VaultBackend reads nothing there
        kv.create_or_update_secret(path="connections/retired", secret={"conn_uri": "http://old"}, mount_point=mount)
        kv.delete_latest_version_of_secret(path="connections/retired", mount_point=mount)
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    return {"mount": mount, "kv_version": version}


def test_vault_lists_and_imports_what_airflows_vault_backend_reads(
        home: Path, openbao: OpenBao, vault_layout: dict[str, Any]) -> None:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    args = ("import", "vault:", "--env", "prod", "--mount", vault_layout["mount"],
            "--kv-version", str(vault_layout["kv_version"]))
    code, dry, _ = report(*args, "--dry-run")
    assert code == 1  # one entry does not parse
    retired = {"connections/retired": "skipped"} if vault_layout["kv_version"] == 2 else {}
    assert {k: r["status"] for k, r in dry.items()} == {
        "connections/smtp_default": "would import", "connections/warehouse": "would import",
        "connections/team/": "skipped", "variables/bucket": "would import", "variables/broken": "failed", **retired}
    assert theirs_reads_nothing_at(openbao, vault_layout, "retired")
    assert "no 'value' field" in dry["variables/broken"]["detail"]
    assert "--connections-path connections/team" in dry["connections/team/"]["detail"]
    code, out = run("ls", "--env", "prod")
    assert "smtp_default" not in out  # a dry run writes nothing

    code, done, _ = report(*args)
    assert code == 1
    assert done["connections/warehouse"]["status"] == "imported" and done["connections/warehouse"]["version"] == 1
    assert done["connections/warehouse"]["source"] == f"vault:{vault_layout['mount']}/connections/warehouse"
    theirs = VaultBackend(url=openbao.url, token=openbao.root_token, mount_point=vault_layout["mount"],
                          kv_engine_version=vault_layout["kv_version"])
    for conn_id in ("smtp_default", "warehouse"):
        ours = as_airflow_connection(conn_id, stored(home, f"prod/connections/{conn_id}"))
        assert_same_connection(ours, theirs.get_connection(conn_id))
    assert stored(home, "prod/variables/bucket") == theirs.get_variable("bucket") == VAR_SECRET

    code, again, _ = report(*args)  # check-and-set: nothing is replaced unless asked
    assert again["connections/warehouse"]["status"] == "skipped" and "exists" in again["connections/warehouse"]["detail"]
    code, over, _ = report(*args, "--overwrite", "--kind", "variables")
    assert set(over) == {"variables/bucket", "variables/broken"} and over["variables/bucket"]["status"] == "overwritten"
    assert over["variables/bucket"]["version"] == 2


def theirs_reads_nothing_at(openbao: OpenBao, vault_layout: dict[str, Any], conn_id: str) -> bool:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    theirs = VaultBackend(url=openbao.url, token=openbao.root_token, mount_point=vault_layout["mount"],
                          kv_engine_version=vault_layout["kv_version"])
    return theirs.get_connection(conn_id) is None


def test_vault_denied_exits_6(home: Path, openbao: OpenBao, vault_layout: dict[str, Any],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A token that may read the variables but not list the connections: a denial, not 'nothing found'."""
    mount = vault_layout["mount"]
    meta = "metadata/" if vault_layout["kv_version"] == 2 else ""
    data = "data/" if vault_layout["kv_version"] == 2 else ""
    policy = openbao.policy(unique("vars-only"), f'''
path "{mount}/{meta}variables/*" {{ capabilities = ["list"] }}
path "{mount}/{data}variables/*" {{ capabilities = ["read"] }}
''')
    token = openbao.client().auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("VAULT_TOKEN", token)
    code, out = run("import", "vault:", "--env", "prod", "--mount", mount, "--kv-version",
                    str(vault_layout["kv_version"]), "--kind", "variables", "--dry-run")
    assert code == 1 and "bucket" in out  # variables: allowed (the broken one fails alone)
    code, out = run("import", "vault:", "--env", "prod", "--mount", mount, "--kv-version",
                    str(vault_layout["kv_version"]))
    assert code == 6 and "connections" in out, out
    assert token not in out


def test_vault_source_options_in_vault_backend_names_and_a_token_file(
        home: Path, openbao: OpenBao, vault_layout: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR")
    monkeypatch.delenv("VAULT_TOKEN")
    token = tmp_path / "token"
    token.write_text(openbao.root_token)
    options = {"mount_point": vault_layout["mount"], "kv_engine_version": vault_layout["kv_version"],
               "variables_path": "", "auth": {"method": "token", "token_file": str(token)}}
    code, rows, out = report("import", f"vault:{openbao.url}", "--env", "prod",
                             "--source-options", json.dumps(options))
    assert code == 0, out  # variables turned off: the broken one is not read
    assert {k: r["status"] for k, r in rows.items() if k != "connections/retired"} == {
        "connections/smtp_default": "imported", "connections/warehouse": "imported", "connections/team/": "skipped"}
    # a flag overrides the same setting given in --source-options
    code, rows, out = report("import", f"vault:{openbao.url}", "--env", "prod", "--source-options",
                             json.dumps(options), "--mount", "secret-does-not-exist")
    assert code == 4 and "secret-does-not-exist" in out


def test_vault_defaults_to_the_runlease_stores_own_vault_client(
        openbao: OpenBao, vault_layout: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With RUNLEASE_STORE=vault, `vault:` talks to the same Vault as the store, with its login."""
    monkeypatch.delenv("VAULT_ADDR")
    monkeypatch.delenv("VAULT_TOKEN")
    token = tmp_path / "token"
    token.write_text(openbao.root_token)
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "vhome"))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps({
        "address": openbao.url, "prefix": unique("rlimport"), "timeout": 5,
        "auth": {"method": "token", "token_file": str(token)}}))
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    code, rows, out = report("import", "vault:", "--env", "prod", "--mount", vault_layout["mount"],
                             "--kv-version", str(vault_layout["kv_version"]), "--kind", "connections")
    assert code == 0, out
    assert {k: r["status"] for k, r in rows.items() if k != "connections/retired"} == {
        "connections/smtp_default": "imported", "connections/warehouse": "imported", "connections/team/": "skipped"}
    assert stored(tmp_path / "vhome", "prod/connections/warehouse")["password"] == FIELD_PASSWORD


def test_vault_bad_input_and_an_unreachable_server(home: Path, vault_layout: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("import", "vault:", "--env", "prod", "--connections-prefix", "x")
    assert code == 2 and "--connections-prefix" in out
    code, out = run("import", "vault:", "--env", "prod", "--kv-version", "3")
    assert code == 2 and "kv_version" in out
    code, out = run("import", "vault:", "--env", "prod", "--source-options", "[1]")
    assert code == 2
    code, out = run("import", "vault:", "--env", "prod", "--source-options", json.dumps({"token": "x"}))
    assert code == 2 and "token" in out  # no credential inline
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    code, out = run("import", "vault:", "--env", "prod", "--mount", vault_layout["mount"])
    assert code == 9 and "127.0.0.1" in out
    monkeypatch.delenv("VAULT_ADDR")
    code, out = run("import", "vault:", "--env", "prod")
    assert code == 2 and "VAULT_ADDR" in out


# --- AWS Secrets Manager: Airflow's SecretsManagerBackend layout ---------------------------------

LEGACY_JSON = {"user": "etl", "pass": FIELD_PASSWORD, "server": "db.legacy", "port": "5432", "database": "shop",
               "engine": "postgres", "extra": {"sslmode": "require"}}


@pytest.fixture()
def aws_layout(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Secrets as a team using Airflow's SecretsManagerBackend wrote them (boto3, straight into moto)."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.endpoint}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    root = unique("afimp")
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_server.endpoint)
    secrets = {
        f"{root}/connections/legacy_uri": f"mysql://app:{URI_PASSWORD}@db.legacy:3306/shop",  # runlease: allow connection-uri-credentials (test fixture)
        f"{root}/connections/legacy_json": json.dumps(LEGACY_JSON),
        f"{root}/connections/custom_words": json.dumps({"usr": "svc", "password": FIELD_PASSWORD, "host": "h",
                                                        "conn_type": "http"}),
        f"{root}/connections/legacy_bad_port": json.dumps({**LEGACY_JSON, "port": "abc"}),
        f"{root}/variables/threshold": VAR_SECRET,
        f"{root}.vars.limit": "10",
        f"{root}/connections_other/not_mine": "http://x",  # the same words, not under the prefix
        f"{root.upper()}/connections/other_case": "http://y",  # AWS's name filter ignores case; Airflow does not
    }
    for name, text in secrets.items():
        sm.create_secret(Name=name, SecretString=text)
    sm.create_secret(Name=f"{root}/connections/binary", SecretBinary=b"\x00\x01")
    sm.create_secret(Name=f"{root}/connections/gone", SecretString="http://z")
    sm.delete_secret(SecretId=f"{root}/connections/gone")  # scheduled for deletion: not listed
    return {"root": root, "endpoint": moto_server.endpoint}


def test_aws_lists_and_imports_what_airflows_secrets_manager_backend_reads(
        home: Path, aws_layout: dict[str, str]) -> None:
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    root = aws_layout["root"]
    args = ("import", "aws:", "--env", "dev", "--connections-prefix", f"{root}/connections",
            "--variables-prefix", f"{root}/variables/", "--source-options",
            json.dumps({"extra_conn_words": {"login": ["usr"]}}))
    code, dry, _ = report(*args, "--dry-run")
    assert code == 1
    assert {k: r["status"] for k, r in dry.items()} == {
        "connections/custom_words": "would import", "connections/legacy_bad_port": "failed",
        "connections/binary": "failed",
        "connections/legacy_json": "would import", "connections/legacy_uri": "would import",
        "variables/threshold": "would import"}
    assert "port" in dry["connections/legacy_bad_port"]["detail"]
    assert "no text value" in dry["connections/binary"]["detail"]
    assert dry["connections/legacy_json"]["source"] == f"aws:{root}/connections/legacy_json"

    code, done, _ = report(*args)
    assert code == 1 and done["variables/threshold"]["status"] == "imported"
    theirs = SecretsManagerBackend(connections_prefix=f"{root}/connections", variables_prefix=f"{root}/variables/",
                                   extra_conn_words={"login": ["usr"]}, region_name="us-east-1",
                                   endpoint_url=aws_layout["endpoint"])
    for conn_id in ("legacy_uri", "legacy_json", "custom_words"):
        ours = as_airflow_connection(conn_id, stored(home, f"dev/connections/{conn_id}"))
        assert_same_connection(ours, theirs.get_connection(conn_id))
    assert stored(home, "dev/variables/threshold") == theirs.get_variable("threshold") == VAR_SECRET

    code, again, _ = report(*args)
    assert again["connections/legacy_json"]["status"] == "skipped"


def test_aws_lookup_pattern_sep_and_bad_input(home: Path, aws_layout: dict[str, str]) -> None:
    root = aws_layout["root"]
    code, rows, out = report("import", "aws:", "--env", "dev", "--kind", "connections", "--dry-run",
                             "--source-options", json.dumps({"connections_prefix": f"{root}/connections",
                                                             "connections_lookup_pattern": "^LEGACY_(uri|json)"}))
    assert code == 0, out
    assert set(rows) == {"connections/legacy_uri", "connections/legacy_json"}  # Airflow's pattern ignores case
    # another separator: `<root>.vars.limit` is variable `limit` (and nothing under `<root>/...`)
    code, rows, out = report("import", "aws:", "--env", "dev", "--kind", "variables",
                             "--variables-prefix", f"{root}.vars", "--sep", ".")
    assert code == 0 and set(rows) == {"variables/limit"}, out
    assert stored(home, "dev/variables/limit") == "10"
    code, out = run("import", "aws:", "--env", "dev", "--variables-prefix", "", "--kind", "variables")
    assert code == 2 and "prefix is empty" in out
    code, out = run("import", "aws:", "--env", "dev", "--mount", "secret")
    assert code == 2 and "--mount" in out
    code, out = run("import", "aws:", "--env", "dev", "--source-options", json.dumps({"region": "nowhere"}))
    assert code == 2 and "region" in out
    code, out = run("import", str(home / "x.json"), "--env", "dev", "--sep", "/")
    assert code == 2 and "--sep" in out


def test_aws_listing_follows_pages(home: Path, aws_layout: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from runlease.store import aws_airflow

    monkeypatch.setattr(aws_airflow, "PAGE_SIZE", 2)  # 7 names under the prefix: 4 pages
    code, rows, out = report("import", "aws:", "--env", "dev", "--kind", "connections", "--dry-run",
                             "--connections-prefix", f"{aws_layout['root']}/connections")
    assert set(rows) == {f"connections/{n}" for n in ("legacy_uri", "legacy_json", "custom_words",
                                                      "legacy_bad_port", "binary")}, out
    monkeypatch.setattr(aws_airflow, "MAX_PAGES", 1)  # the bound holds (no endless listing)
    code, rows, out = report("import", "aws:", "--env", "dev", "--kind", "connections", "--dry-run",
                             "--connections-prefix", f"{aws_layout['root']}/connections")
    assert len(rows) < 5


def test_aws_unreachable_endpoint_exits_9(home: Path, aws_layout: dict[str, str]) -> None:
    code, out = run("import", "aws:", "--env", "dev", "--source-options",
                    json.dumps({"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1,
                                "connect_timeout": 1, "read_timeout": 1}))
    assert code == 9 and "127.0.0.1" in out


def test_long_remote_imports_show_reading_and_importing_bars_on_a_terminal_only(
        home: Path, openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from unit.test_import import _run_on

    mount = openbao.enable_engine("kv", path=unique("afmany"), options={"version": "2"})
    kv = openbao.client().secrets.kv.v2
    for i in range(25):
        kv.create_or_update_secret(path=f"variables/var_{i:02d}", secret={"value": f"{VAR_SECRET}-{i}"},
                                   mount_point=mount)
    env = {**os.environ, "RUNLEASE_HOME": str(home), "COLUMNS": "120", "TERM": "xterm",
           "VAULT_ADDR": openbao.url, "VAULT_TOKEN": openbao.root_token}
    env.pop("NO_COLOR", None)
    on_tty = _run_on(True, ["import", "vault:", "--mount", mount, "--env", "tty"], env)
    assert "reading" in on_tty and "importing" in on_tty and "25 imported" in on_tty
    piped = _run_on(False, ["import", "vault:", "--mount", mount, "--env", "pipe"], env)
    assert "reading" not in piped and "importing" not in piped and "25 imported" in piped
    for text in (on_tty, piped):
        assert VAR_SECRET not in text
