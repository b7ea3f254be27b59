"""A home whose values live in Vault or AWS: init probes first, the ledger stays local, CLI works end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.audit import correlation
from runlease.cli.main import app
from runlease.errors import StoreUnavailableError
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings
from runlease.store.local import LocalStore
from runlease.store.vault import VaultStore
from store_support import aws_options, free_port, vault_options
from support.openbao import OpenBao

ADMIN = RunIdentity(orchestrator="cli", pipeline="ops", task_id="put")
RUN = RunIdentity(orchestrator="airflow", pipeline="nightly_etl", run_id="scheduled__2024-05-01", task_id="load",
                  try_number=1)
URI = "postgres://etl:Remote-Pa55word-x@db.internal:5432/analytics"  # runlease: allow connection-uri-credentials (test fixture)


def test_vault_home_probes_first_and_keeps_the_ledger_local(openbao: OpenBao, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="vault", store_options=vault_options(openbao, tmp_path))
    mark = openbao.audit_mark()
    rt, created = init_home(settings)
    try:
        assert created and isinstance(rt.store, VaultStore) and isinstance(rt.local, LocalStore)
        probe = openbao.requests(mark)
        assert probe and probe[0]["path"].startswith("auth/token/lookup-self")
        assert probe[1]["path"] == "sys/internal/ui/mounts/secret"  # the probe (KV v2 mount?) came first
        rt.broker.put("dev/connections/warehouse", {"conn_type": "postgres", "password": "pw-vault"}, ADMIN)  # runlease: allow secret-assignment (test fixture)
        start = openbao.audit_mark()
        lease = rt.broker.lease("warehouse", RUN, 600)
        assert lease.value["password"] == "pw-vault" and lease.version == 1
        during = openbao.requests(start)
        assert during and {openbao.correlation(r) for r in during} == {correlation.correlation_id(RUN)}
        events = list(rt.ledger.events(AuditQuery()))
        assert [e.action for e in events] == ["write", "lease"]
        assert events[1].run_id == RUN.run_id and rt.ledger.verify().ok
    finally:
        rt.close()
    with sqlite3.connect(settings.store_file) as db:
        assert db.execute("SELECT count(*) FROM secrets").fetchone()[0] == 0  # values are in Vault only
    entry = openbao.client().secrets.kv.v2.read_secret_version(
        path=f"{settings.store_options['prefix']}/dev/connections/warehouse", raise_on_deleted_version=True)
    assert entry["data"]["data"]["value"]["password"] == "pw-vault"
    rt = open_runtime(settings)
    try:
        assert rt.broker.read(SecretPath.parse("dev/connections/warehouse"), ADMIN).version == 1
    finally:
        rt.close()


def test_init_refuses_a_kv_v1_or_missing_mount_and_writes_nothing(openbao: OpenBao, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 5: KV v1 (no versions, no check-and-set) and a missing mount used to pass `init`."""
    v1 = openbao.enable_engine("kv", options={"version": "1"})
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    for mount, expected in ((v1, "KV version 1"), ("no-such-mount", "no secrets engine at 'no-such-mount'")):
        monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(vault_options(openbao, tmp_path, mount=mount)))
        code, out = run("init")
        assert code == 8 and expected in out, out
        assert not (tmp_path / "home").exists()


def test_malformed_store_options_json_is_bad_input_without_the_value(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 8: malformed RUNLEASE_STORE_OPTIONS came out as "unexpected SettingsError", exit 1."""
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", '{"address": "http://127.0.0.1:1", "auth": {"token": "hvs.LEAK"')
    for command in (["init"], ["ls"]):
        code, out = run(*command)
        assert code == 2 and "RUNLEASE_STORE_OPTIONS is not valid JSON" in out, out
        assert "hvs.LEAK" not in out and "unexpected" not in out


def test_unreachable_remote_store_leaves_no_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", store="vault",
                        store_options={"address": f"http://127.0.0.1:{free_port()}", "timeout": 2,
                                       "auth": {"method": "token", "token_file": str(tmp_path / "t")}})
    (tmp_path / "t").write_text("hvs.x")
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        init_home(settings)
    assert not settings.home.exists()


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_cli_end_to_end_with_the_aws_store(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    opts = aws_options(moto_url)
    monkeypatch.setenv("RUNLEASE_HOME", str(home))
    monkeypatch.setenv("RUNLEASE_STORE", "aws")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(opts))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    code, out = run("init")
    assert code == 0, out
    assert "AWS Secrets Manager" in out and "ledger:" in out
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    assert run("put", "dev/connections/warehouse", "--stdin", "--pending", input=URI + "2")[0] == 0
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI
    code, out = run("ls", "dev/")
    assert code == 0 and "dev/connections/warehouse" in out and "Remote-Pa55word" not in out
    code, out = run("history", "dev/connections/warehouse")
    assert code == 0 and "PENDING" in out and "CURRENT" in out
    code, out = run("lease", "dev/connections/warehouse", "--run-id", "r1", "--pipeline", "etl", "--task-id", "t")
    assert code == 0 and "Remote-Pa55word" not in out
    code, out = run("doctor")
    assert code == 0 and "remote store" in out, out
    code, out = run("key", "rotate")
    assert code == 0, out
    code, out = run("audit", "verify")
    assert code == 0, out


def test_cli_reports_bad_store_options_without_echoing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps({"address": "http://127.0.0.1:1",
                                                             "auth": {"method": "token", "token": "hvs.LEAKME"}}))
    code, out = run("init")
    assert code == 2 and "auth.token" in out and "hvs.LEAKME" not in out
    assert not (tmp_path / "home").exists()


def test_a_mount_disabled_after_init_is_a_clear_store_error(openbao: OpenBao, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 8: Vault's 404 "no handler for route" came out as "unexpected InvalidPath", exit 1 (or "not found")."""
    mount = openbao.enable_engine("kv", options={"version": "2"})
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(vault_options(openbao, tmp_path, mount=mount)))
    assert run("init")[0] == 0
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    openbao.client().sys.disable_secrets_engine(mount)
    for command in (["get", "dev/connections/warehouse"], ["ls"], ["put", "dev/connections/other", "--stdin"]):
        code, out = run(*command, input=URI)
        assert code == 8 and f"no KV v2 secrets engine at '{mount}'" in out and "unexpected" not in out, (command, out)
        assert "Remote-Pa55word" not in out
