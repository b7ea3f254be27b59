"""A secret put back to an earlier genuine copy of its rows is caught by `audit verify` and `doctor`.

The attacker of issue #12 saved an earlier copy of the database (no key) and
later puts back all of one secret's rows from it: every row MAC verifies,
since each row once was genuine. The signed secret state record in the home
(runlease.integrity.secret_state) no longer matches, so `audit verify` fails with exit 7.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.runtime import Runtime, open_runtime
from runlease.integrity.secret_state import secret_state_path

TOKEN = SecretPath.parse("dev/tokens/api")
OTHER = SecretPath.parse("dev/tokens/other")


@pytest.fixture()
def cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNLEASE_HOME", str(runtime.settings.home))
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.output

    return run


def snapshot(rt: Runtime, path: SecretPath) -> dict[str, list[tuple]]:
    """The attacker's saved copy of one secret's rows."""
    with sqlite3.connect(rt.settings.store_file) as db:
        return {table: db.execute(f"SELECT * FROM {table} WHERE path=?", (str(path),)).fetchall()
                for table in ("secrets", "stages", "versions")}


def put_back(rt: Runtime, path: SecretPath, saved: dict[str, list[tuple]]) -> None:
    """Replace all of the secret's rows with the saved ones (every one of them genuine)."""
    with sqlite3.connect(rt.settings.store_file, isolation_level=None) as db:
        for table in ("stages", "versions", "secrets"):
            db.execute(f"DELETE FROM {table} WHERE path=?", (str(path),))
        for table in ("secrets", "versions", "stages"):
            for row in saved[table]:
                db.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)


def test_rolling_a_secret_back_to_an_earlier_copy_fails_audit_verify(runtime: Runtime, identity: RunIdentity,
                                                                     admin: RunIdentity, cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(TOKEN, "retired-token-value-1", admin, kind="tokens")
    runtime.broker.put(OTHER, "other-token-value-1", admin, kind="tokens")
    saved = snapshot(runtime, TOKEN)
    runtime.broker.put(TOKEN, "current-token-value-2", admin, kind="tokens")
    runtime.broker.put(OTHER, "other-token-value-2", admin, kind="tokens")
    assert cli("audit", "verify")[0] == 0

    put_back(runtime, TOKEN, saved)
    # Every row is genuine, so a read cannot tell (documented): the old token is served ...
    assert runtime.broker.lease(TOKEN, identity, kind="tokens").value == "retired-token-value-1"
    # ... but the store no longer matches the state recorded outside the database.
    code, out = cli("audit", "verify")
    assert code == 7 and "rollback" in out, out
    assert "retired-token-value-1" not in out and "current-token-value-2" not in out
    code, out = cli("doctor")
    assert code == 1 and "secret rollback" in out and "FAIL" in out.split("secret rollback")[1][:40], out


def test_reviving_a_deleted_secret_from_an_earlier_copy_fails_audit_verify(runtime: Runtime, admin: RunIdentity,
                                                                           cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(TOKEN, "deleted-token-value-1", admin, kind="tokens")
    saved = snapshot(runtime, TOKEN)
    runtime.broker.delete(TOKEN, admin, kind="tokens")
    put_back(runtime, TOKEN, saved)
    assert runtime.store.info(TOKEN).deleted is False
    code, out = cli("audit", "verify")
    assert code == 7 and "rollback" in out, out


def test_every_genuine_write_keeps_the_record_in_step(runtime: Runtime, identity: RunIdentity, admin: RunIdentity,
                                                      cli) -> None:  # type: ignore[no-untyped-def]
    """No false alarm: put, pending put, stage moves, metadata, deprecate, delete, revive, key rotation."""
    runtime.broker.put(TOKEN, "token-one-value", admin, kind="tokens")
    runtime.broker.put(TOKEN, "token-two-value", admin, kind="tokens", stage=Stage.PENDING)
    runtime.broker.move_stage(TOKEN, Stage.CURRENT, 2, admin, kind="tokens")
    runtime.store.update_metadata(TOKEN, {"rotation": {"every": "30d"}})
    runtime.store.deprecate(TOKEN, 1)
    runtime.broker.delete(TOKEN, admin, kind="tokens")
    runtime.broker.put(TOKEN, "token-three-value", admin, kind="tokens")
    with runtime.ledger.atomic():  # two writes in one transaction move the record once
        runtime.broker.put(OTHER, "other-one-value", admin, kind="tokens")
        runtime.broker.put(OTHER, "other-two-value", admin, kind="tokens")
    assert runtime.local.check_secret_state() == ""
    code, out = cli("key", "rotate")
    assert code == 0, out
    code, out = cli("audit", "verify")
    assert code == 0, out


def test_a_record_left_behind_is_reported_and_reanchor_re_records_it_audited(runtime: Runtime, admin: RunIdentity,
                                                                             cli) -> None:  # type: ignore[no-untyped-def]
    """A crash between a commit and the record update looks like a rollback; the way out is deliberate."""
    runtime.broker.put(TOKEN, "token-one-value", admin, kind="tokens")
    record = secret_state_path(runtime.settings.store_file)
    behind = record.read_bytes()
    runtime.broker.put(TOKEN, "token-two-value", admin, kind="tokens")
    record.write_bytes(behind)
    assert cli("audit", "verify")[0] == 7
    runtime.broker.put(OTHER, "other-one-value", admin, kind="tokens")  # a later write does not cover it up
    assert cli("audit", "verify")[0] == 7
    code, out = cli("audit", "verify", "--reanchor")
    assert code == 0 and "secret state re-recorded" in out, out
    [event] = list(runtime.ledger.events(AuditQuery(action="secret_state_reset")))
    assert "rollback" in event.detail["previous_problem"]


def test_a_deleted_or_forged_record_is_reported_not_recreated(runtime: Runtime, admin: RunIdentity, cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(TOKEN, "token-one-value", admin, kind="tokens")
    settings = runtime.settings
    record = secret_state_path(settings.store_file)
    record.unlink()
    rt = open_runtime(settings)  # a home that had its records: a missing one is not silently re-created
    rt.close()
    assert not record.exists()
    code, out = cli("audit", "verify")
    assert code == 7 and "missing" in out, out
    assert cli("audit", "verify", "--reanchor")[0] == 0
    raw = bytearray(record.read_bytes())
    raw[raw.index(b'"count": ') + 9] = ord("7")  # edit the count: the signature no longer matches
    record.write_bytes(bytes(raw))
    code, out = cli("audit", "verify")
    assert code == 7 and "signature" in out, out


def test_a_store_first_opened_with_this_runlease_gets_its_record(runtime: Runtime, admin: RunIdentity,
                                                                 tmp_path: Path) -> None:
    """Homes from before the record existed (no format record either) are recorded on their next open."""
    runtime.broker.put(TOKEN, "token-one-value", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    secret_state_path(settings.store_file).unlink()
    Path(f"{settings.store_file}.format").unlink()
    rt = open_runtime(settings)
    try:
        assert rt.local.check_secret_state() == ""
    finally:
        rt.close()
