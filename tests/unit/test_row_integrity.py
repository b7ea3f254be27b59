"""Rows the broker acts on are authenticated: edits made with plain sqlite3 (no key) fail safely.

Each test is an attack from issue #12 done the way an attacker with write
access to the database but no KEK would: the ``sqlite3`` module on the file.
"Fails safely" means: an IntegrityError (exit 7 at the CLI), no value served,
no issuer called, and the failure in the audit trail.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.clients.db import SCHEMA_VERSION
from runlease.errors import IntegrityError, SecretNotFoundError
from runlease.integrity.format_record import FormatRecorder, store_record_path
from runlease.issuers.static import StaticIssuer
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity, SecretPath, Stage, utcnow
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings
from runlease.store.local import store_scope
from support.core import conn

PATH = SecretPath.parse("dev/connections/warehouse")
TOKEN = SecretPath.parse("dev/tokens/api")


def raw(rt: Runtime) -> sqlite3.Connection:
    """The attacker's handle: the same file, no key."""
    return sqlite3.connect(rt.settings.store_file, isolation_level=None)


def error_events(rt: Runtime, action: str) -> list:
    return [e for e in rt.ledger.events(AuditQuery(action=action)) if e.outcome.value == "error"]


class SpyIssuer(StaticIssuer):
    """A static issuer that records revocations, registered under the postgres issuer's name."""

    name = "postgres"

    def __init__(self) -> None:
        self.revoked: list[str] = []

    def revoke(self, lease) -> None:  # type: ignore[no-untyped-def]
        self.revoked.append(lease.lease_id)


def test_switching_the_issuer_in_metadata_serves_nothing(runtime: Runtime, identity: RunIdentity,
                                                         admin: RunIdentity) -> None:
    admin_conn = conn(password="Admin-Only-Pa55word")  # runlease: allow secret-assignment (test fixture)
    runtime.broker.put(PATH, admin_conn, admin)
    runtime.store.update_metadata(PATH, {"issuer": "postgres", "parent_role": "readers"})
    with raw(runtime) as db:
        meta = json.loads(db.execute("SELECT metadata FROM secrets WHERE path=?", (str(PATH),)).fetchone()[0])
        meta["issuer"] = "static"
        db.execute("UPDATE secrets SET metadata=? WHERE path=?", (json.dumps(meta, sort_keys=True), str(PATH)))

    with pytest.raises(IntegrityError, match="secrets row dev/connections/warehouse"):
        runtime.broker.lease(PATH, identity)
    assert runtime.ledger.find_leases() == []
    [event] = error_events(runtime, "lease")
    assert event.path == str(PATH) and event.detail["table"] == "secrets"
    assert event.detail["error"] == "RowTamperedError"


def test_an_edit_after_the_row_was_read_and_trusted_is_still_caught(runtime: Runtime, identity: RunIdentity,
                                                                    admin: RunIdentity) -> None:
    """The store skips the MAC for a secret row it authenticated unchanged (the lease cache's
    per-hit resolve); reading it first must not make a later edit -- issuer or stage label -- pass."""
    runtime.broker.put(PATH, conn(), admin)
    runtime.broker.put(PATH, conn(password="Second-Pa55word"), admin)  # runlease: allow secret-assignment (test fixture)
    runtime.store.update_metadata(PATH, {"issuer": "postgres", "parent_role": "readers"})
    for _ in range(2):
        assert runtime.store.resolve(PATH).version == 2  # authenticated, then known unchanged
    edits = ("UPDATE secrets SET metadata='{\"issuer\": \"static\"}' WHERE path=?",
             "UPDATE stages SET version=1 WHERE path=? AND stage='CURRENT'")
    for edit in edits:
        with raw(runtime) as db:
            before = db.execute("SELECT metadata FROM secrets WHERE path=?", (str(PATH),)).fetchone()[0]
            db.execute(edit, (str(PATH),))
        with pytest.raises(IntegrityError, match="secrets row dev/connections/warehouse"):
            runtime.store.resolve(PATH)
        with raw(runtime) as db:
            db.execute("UPDATE secrets SET metadata=? WHERE path=?", (before, str(PATH)))
            db.execute("UPDATE stages SET version=2 WHERE path=? AND stage='CURRENT'", (str(PATH),))
        assert runtime.store.resolve(PATH).version == 2  # restored: authentic again


def test_moving_current_back_to_an_old_version_serves_nothing(runtime: Runtime, identity: RunIdentity,
                                                             admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "old-token-value-1", admin, kind="tokens")
    runtime.broker.put(TOKEN, "new-token-value-2", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE stages SET version=1 WHERE path=? AND stage='CURRENT'", (str(TOKEN),))
    with pytest.raises(IntegrityError):
        runtime.broker.lease(TOKEN, identity, kind="tokens")
    with pytest.raises(IntegrityError):
        runtime.broker.read(TOKEN, identity, kind="tokens")
    with pytest.raises(IntegrityError):
        runtime.store.resolve(TOKEN)
    assert len(error_events(runtime, "lease")) == 1 and len(error_events(runtime, "read")) == 1


def test_replaying_an_old_stage_row_is_caught(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    """The stage rows carry no MAC of their own: the secret's row covers them, so an old genuine
    stage row put back next to the current secret row does not authenticate."""
    runtime.broker.put(TOKEN, "old-token-value-1", admin, kind="tokens")
    with raw(runtime) as db:
        old_stages = db.execute("SELECT path, stage, version FROM stages WHERE path=?", (str(TOKEN),)).fetchall()
    runtime.broker.put(TOKEN, "new-token-value-2", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("DELETE FROM stages WHERE path=?", (str(TOKEN),))
        db.executemany("INSERT INTO stages(path, stage, version) VALUES (?,?,?)", old_stages)
    with pytest.raises(IntegrityError):
        runtime.broker.lease(TOKEN, identity, kind="tokens")


def test_clearing_the_deleted_mark_does_not_revive_a_secret(runtime: Runtime, identity: RunIdentity,
                                                           admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "deleted-token-value", admin, kind="tokens")
    runtime.broker.delete(TOKEN, admin, kind="tokens")
    with pytest.raises(SecretNotFoundError):
        runtime.broker.lease(TOKEN, identity, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE secrets SET deleted_at=NULL WHERE path=?", (str(TOKEN),))
    with pytest.raises(IntegrityError):
        runtime.broker.lease(TOKEN, identity, kind="tokens")
    assert runtime.ledger.find_leases() == []


@pytest.mark.parametrize("edit", [
    "UPDATE stages SET version='v1' WHERE stage='CURRENT'",
    "UPDATE versions SET version='x', deprecated='yes'",
    "INSERT INTO stages(path, stage, version) VALUES ('dev/tokens/api', 'LATEST', 1)",
])
def test_malformed_values_are_tampering_not_a_crash(runtime: Runtime, identity: RunIdentity, admin: RunIdentity,
                                                    edit: str) -> None:
    runtime.broker.put(TOKEN, "token-value-one", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute(edit)
    with pytest.raises(IntegrityError):
        runtime.broker.lease(TOKEN, identity, kind="tokens")


def test_editing_a_version_row_is_caught(runtime: Runtime, admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "token-value-one", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE versions SET deprecated=1 WHERE path=?", (str(TOKEN),))
    with pytest.raises(IntegrityError, match="versions row dev/tokens/api v1"):
        runtime.store.get(TOKEN)
    with pytest.raises(IntegrityError):
        runtime.store.history(TOKEN)


def _forge_lease(db: sqlite3.Connection, lease_id: str, role: str, mac: str | None) -> None:
    past = (utcnow() - timedelta(hours=2)).isoformat(timespec="microseconds")
    db.execute(
        "INSERT INTO leases(lease_id, path, version, stage, issuer, orchestrator, pipeline, run_id, task_id, "
        "try_number, map_index, principal, issued_at, expires_at, state, revoked_at, revoke_reason, issuer_state, mac) "
        "VALUES (?,?,1,'CURRENT','postgres','airflow','evil','r1','t',1,NULL,NULL,?,?,'active',NULL,NULL,?,?)",
        (lease_id, str(PATH), past, past, json.dumps({"role": role, "role_prefix": "", "parent_role": "x"}), mac),
    )


def test_a_forged_lease_row_is_never_revoked(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    spy = SpyIssuer()
    runtime.broker.issuers.register(spy)
    runtime.broker.put(PATH, conn(), admin)
    genuine = runtime.broker.lease(PATH, identity, ttl=1)
    with raw(runtime) as db:
        genuine_mac = db.execute("SELECT mac FROM leases WHERE lease_id=?", (genuine.lease_id,)).fetchone()[0]
        _forge_lease(db, "rlforged000000000000000001", "victim_role", None)
        _forge_lease(db, "rlforged000000000000000002", "victim_role", genuine_mac)  # a copied MAC
        _forge_lease(db, "rlforged000000000000000003", "victim_role", "kek-0000000000000000:" + "0" * 64)

    with pytest.raises(IntegrityError, match="3 lease row"):
        runtime.broker.sweep_expired(utcnow() + timedelta(hours=1))
    assert spy.revoked == []  # no issuer was called for a forged row ...
    assert runtime.ledger.get_lease(genuine.lease_id).state is LeaseState.EXPIRED  # ... the genuine one was closed
    tampered = {e.lease_id for e in error_events(runtime, "expire")}
    assert tampered == {"rlforged000000000000000001", "rlforged000000000000000002", "rlforged000000000000000003"}
    with raw(runtime) as db:
        states = dict(db.execute("SELECT lease_id, state FROM leases WHERE lease_id LIKE 'rlforged%'"))
    assert set(states.values()) == {"active"}  # untouched: nothing acted on them

    with pytest.raises(IntegrityError):
        runtime.broker.revoke("rlforged000000000000000001")
    with pytest.raises(IntegrityError, match="failed authentication"):  # a made-up key id is tampering too
        runtime.broker.revoke("rlforged000000000000000003")
    with pytest.raises(IntegrityError):
        runtime.broker.revoke_run("r1")
    assert spy.revoked == []


def test_a_remembered_lease_state_never_outlives_a_change_to_the_database(runtime: Runtime, identity: RunIdentity,
                                                                           admin: RunIdentity) -> None:
    """lease_state answers from memory only while nothing was committed since (SQLite's data_version for
    other connections, a counter for this one's own commits, nothing inside an open write transaction)."""
    runtime.broker.put(PATH, conn(), admin)
    lease = runtime.broker.lease(PATH, identity)
    for _ in range(2):
        assert runtime.ledger.lease_state(lease.lease_id) is LeaseState.ACTIVE  # read, then remembered
    # an attacker's connection flips the state without the key: read again, refused
    with raw(runtime) as db:
        db.execute("UPDATE leases SET state='revoked' WHERE lease_id=?", (lease.lease_id,))
    with pytest.raises(IntegrityError):
        runtime.ledger.lease_state(lease.lease_id)
    with raw(runtime) as db:
        db.execute("UPDATE leases SET state='active' WHERE lease_id=?", (lease.lease_id,))
    assert runtime.ledger.lease_state(lease.lease_id) is LeaseState.ACTIVE
    # a revoke by another process (its own connection) is seen at once
    other = open_runtime(runtime.settings)
    try:
        assert other.broker.revoke(lease.lease_id) is True
    finally:
        other.close()
    assert runtime.ledger.lease_state(lease.lease_id) is LeaseState.REVOKED
    # this connection's own commit, and its own uncommitted write inside a transaction, are seen too
    second = runtime.broker.lease(PATH, identity)
    assert runtime.ledger.lease_state(second.lease_id) is LeaseState.ACTIVE
    with runtime.ledger.atomic():
        assert runtime.broker.revoke(second.lease_id) is True
        assert runtime.ledger.lease_state(second.lease_id) is LeaseState.REVOKED
    assert runtime.ledger.lease_state(second.lease_id) is LeaseState.REVOKED
    third = runtime.broker.lease(PATH, identity)
    assert runtime.ledger.lease_state(third.lease_id) is LeaseState.ACTIVE
    assert runtime.broker.revoke(third.lease_id) is True  # committed through this very connection
    assert runtime.ledger.lease_state(third.lease_id) is LeaseState.REVOKED


def test_editing_a_genuine_lease_row_is_caught(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    runtime.broker.put(PATH, conn(), admin)
    lease = runtime.broker.lease(PATH, identity)
    for column, value in (("issuer_state", '{"role": "postgres"}'), ("pipeline", "other_dag"),
                          ("expires_at", "2999-01-01T00:00:00.000000+00:00"), ("issuer", "postgres")):
        with raw(runtime) as db:
            before = db.execute(f"SELECT {column} FROM leases WHERE lease_id=?", (lease.lease_id,)).fetchone()[0]
            db.execute(f"UPDATE leases SET {column}=? WHERE lease_id=?", (value, lease.lease_id))
        with pytest.raises(IntegrityError):
            runtime.ledger.get_lease(lease.lease_id)
        with raw(runtime) as db:
            db.execute(f"UPDATE leases SET {column}=? WHERE lease_id=?", (before, lease.lease_id))
    assert runtime.broker.revoke(lease.lease_id) is True  # restored row: authentic again


def test_a_lease_row_cannot_be_transplanted_between_stores_sharing_a_key(tmp_path: Path, identity: RunIdentity,
                                                                         admin: RunIdentity) -> None:
    import base64
    import os

    from runlease.runtime import init_home

    key = base64.b64encode(os.urandom(32)).decode()
    a, _ = init_home(Settings(home=tmp_path / "a", master_key=key))
    b, _ = init_home(Settings(home=tmp_path / "b", master_key=key))
    try:
        a.broker.put(PATH, conn(), admin)
        lease = a.broker.lease(PATH, identity)
        with raw(a) as src, raw(b) as dst:
            row = src.execute("SELECT * FROM leases WHERE lease_id=?", (lease.lease_id,)).fetchone()
            dst.execute(f"INSERT INTO leases VALUES ({','.join('?' * len(row))})", row)
        assert a.ledger.get_lease(lease.lease_id).lease_id == lease.lease_id
        with pytest.raises(IntegrityError):
            b.ledger.get_lease(lease.lease_id)
    finally:
        a.close()
        b.close()


def test_doctor_lists_every_tampered_row(runtime: Runtime, identity: RunIdentity, admin: RunIdentity,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.broker.put(TOKEN, "doctor-token-1", admin, kind="tokens")
    runtime.broker.lease(TOKEN, identity, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE secrets SET metadata='{\"issuer\": \"static\"}'")
        db.execute("UPDATE versions SET deprecated=1")
        db.execute("UPDATE leases SET pipeline='other'")
    monkeypatch.setenv("RUNLEASE_HOME", str(runtime.settings.home))
    result = CliRunner().invoke(app, ["doctor"], terminal_width=300)
    assert result.exit_code == 1
    assert "3 row(s) changed without the key" in result.output


def test_cli_reports_tampering_with_exit_7(runtime: Runtime, admin: RunIdentity,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.broker.put(TOKEN, "cli-token-value-1", admin, kind="tokens")
    runtime.broker.put(TOKEN, "cli-token-value-2", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE stages SET version=1 WHERE path=? AND stage='CURRENT'", (str(TOKEN),))
    monkeypatch.setenv("RUNLEASE_HOME", str(runtime.settings.home))
    for args in (["get", str(TOKEN), "--reveal"], ["lease", str(TOKEN), "--reveal"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 7, result.output
        assert "cli-token-value" not in result.output
        assert "failed authentication" in result.output


def test_key_rotation_re_macs_rows_under_the_new_key(runtime: Runtime, identity: RunIdentity,
                                                     admin: RunIdentity) -> None:
    from runlease.keys.keyfile import prepend_new_key

    runtime.broker.put(TOKEN, "rotating-token-1", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    ring = prepend_new_key(settings.key_file)
    rt = open_runtime(settings)
    try:
        with rt.ledger.atomic():
            rt.local.rewrap_all()
        with raw(rt) as db:
            kids = {m.split(":")[0] for (m,) in db.execute("SELECT mac FROM secrets UNION ALL SELECT mac FROM versions")}
        assert kids == {ring.active_id}
        assert rt.broker.lease(TOKEN, identity, kind="tokens").value == "rotating-token-1"
    finally:
        rt.close()


def _downgrade_to_v1(store_file: Path) -> None:
    """Make a file look like one written before row MACs existed (schema version 1)."""
    with sqlite3.connect(store_file, isolation_level=None) as db:
        for table in ("secrets", "versions", "leases"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN mac")
        db.execute("UPDATE meta SET value=1 WHERE key='schema_version'")


def test_a_version_1_store_is_upgraded_in_place_on_open(runtime: Runtime, identity: RunIdentity,
                                                       admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "legacy-token-1", admin, kind="tokens")
    runtime.broker.put(TOKEN, "legacy-token-2", admin, kind="tokens")
    lease = runtime.broker.lease(TOKEN, identity, kind="tokens")
    settings = runtime.settings
    tip = list(runtime.ledger.events(AuditQuery()))[-1]
    runtime.close()
    _downgrade_to_v1(settings.store_file)
    # A genuine old home has no format record (only runlease with row MACs writes one).
    store_record_path(settings.store_file).unlink()
    # A version-1 anchor: unsigned, with the plain check hash older runlease wrote.
    import hashlib

    check = hashlib.sha256(f"runlease-anchor|{tip.seq}|{tip.chain}".encode()).hexdigest()[:16]
    settings.anchor_file.write_bytes(
        json.dumps({"seq": tip.seq, "chain": tip.chain, "check": check}).encode().ljust(191) + b"\n")

    rt = open_runtime(settings)
    try:
        assert rt.db.schema_version == SCHEMA_VERSION
        assert rt.ledger.verify().ok  # the legacy anchor matched the chain and was signed in the upgrade
        assert rt.broker.lease(TOKEN, identity, kind="tokens").value == "legacy-token-2"
        assert rt.broker.revoke(lease.lease_id) is True
        assert [v.version for v in rt.store.history(TOKEN)] == [1, 2]
        with raw(rt) as db:
            assert db.execute("SELECT count(*) FROM secrets WHERE mac IS NULL").fetchone()[0] == 0
            db.execute("UPDATE stages SET version=1 WHERE stage='CURRENT'")
        with pytest.raises(IntegrityError):  # authenticated from now on
            rt.broker.lease(TOKEN, identity, kind="tokens")
        assert FormatRecorder(rt.keyring, store_scope(rt.local.store_id)).read(
            store_record_path(settings.store_file)).schema_version == SCHEMA_VERSION
    finally:
        rt.close()


def test_resetting_the_schema_version_does_not_get_forged_rows_authenticated(runtime: Runtime,
                                                                            admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "token-a-value", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    with sqlite3.connect(settings.store_file, isolation_level=None) as db:
        db.execute("UPDATE meta SET value=1 WHERE key='schema_version'")
        db.execute("UPDATE secrets SET deleted_at='2020-01-01', mac=NULL")
    # Even with the home's evidence gone (record and anchor deleted), the MAC columns give it away.
    store_record_path(settings.store_file).unlink()
    settings.anchor_file.unlink()
    with pytest.raises(IntegrityError, match="already has row MACs"):
        open_runtime(settings)


def test_stage_and_metadata_writes_keep_rows_authentic(runtime: Runtime, identity: RunIdentity,
                                                       admin: RunIdentity) -> None:
    """Every legitimate write path re-MACs: put, pending put, move_stage, metadata, delete, revive."""
    runtime.broker.put(TOKEN, "token-one-value", admin, kind="tokens")
    runtime.broker.put(TOKEN, "token-two-value", admin, kind="tokens", stage=Stage.PENDING)
    runtime.broker.move_stage(TOKEN, Stage.CURRENT, 2, admin, kind="tokens")
    runtime.store.update_metadata(TOKEN, {"rotation": {"every": "30d"}})
    runtime.store.deprecate(TOKEN, 1)
    assert runtime.broker.lease(TOKEN, identity, kind="tokens").value == "token-two-value"
    runtime.broker.delete(TOKEN, admin, kind="tokens")
    runtime.broker.put(TOKEN, "token-three-value", admin, kind="tokens")
    assert runtime.broker.lease(TOKEN, identity, kind="tokens").value == "token-three-value"
    assert [s.path for s in runtime.store.list("dev/")] == [TOKEN]


def test_cli_sweep_reports_a_forged_lease_with_exit_7(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    with raw(runtime) as db:
        _forge_lease(db, "rlforged00000000000000000a", "postgres", None)
    monkeypatch.setenv("RUNLEASE_HOME", str(runtime.settings.home))
    result = CliRunner().invoke(app, ["sweep"])
    assert result.exit_code == 7 and "rlforged00000000000000000a" in result.output
    assert "failed authentication" in result.output
    result = CliRunner().invoke(app, ["audit", "show", "--action", "expire"], terminal_width=300)
    assert "error" in result.output


def _downgrade_and_forge(settings: Settings) -> None:
    """The whole-file downgrade attack: old format, then a forged row the upgrade would sign."""
    _downgrade_to_v1(settings.store_file)
    with sqlite3.connect(settings.store_file, isolation_level=None) as db:
        db.execute("UPDATE stages SET version=1 WHERE stage='CURRENT'")  # serve the retired token
        db.execute("DELETE FROM stages WHERE stage='PREVIOUS'")


def _schema_version(store_file: Path) -> int:
    with sqlite3.connect(store_file) as db:
        return int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def test_rewriting_the_file_into_the_pre_mac_format_is_refused_not_upgraded(
        runtime: Runtime, admin: RunIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.broker.put(TOKEN, "retired-token-1", admin, kind="tokens")
    runtime.broker.put(TOKEN, "current-token-2", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    _downgrade_and_forge(settings)

    with pytest.raises(IntegrityError, match="signed format record says it was migrated"):
        open_runtime(settings)
    assert _schema_version(settings.store_file) == 1  # never migrated, forged row never signed
    with sqlite3.connect(settings.store_file) as db:
        assert "mac" not in {r[1] for r in db.execute("PRAGMA table_info(secrets)")}
        refused = db.execute("SELECT outcome, detail FROM audit WHERE action='store_open'").fetchall()
    assert refused and refused[-1][0] == "error" and "StoreDowngradedError" in refused[-1][1]

    monkeypatch.setenv("RUNLEASE_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["get", str(TOKEN), "--reveal"])
    assert result.exit_code == 7, result.output
    assert "retired-token-1" not in result.output and "current-token-2" not in result.output
    assert "pre-MAC format" in result.output
    assert _schema_version(settings.store_file) == 1


def test_deleting_the_format_record_too_is_caught_by_the_signed_anchor(runtime: Runtime, admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "retired-token-1", admin, kind="tokens")
    runtime.broker.put(TOKEN, "current-token-2", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    _downgrade_and_forge(settings)
    store_record_path(settings.store_file).unlink()
    with pytest.raises(IntegrityError, match="audit anchor is in the signed format"):
        open_runtime(settings)
    assert _schema_version(settings.store_file) == 1


def test_a_forged_or_foreign_format_record_still_counts_as_evidence(runtime: Runtime, admin: RunIdentity) -> None:
    runtime.broker.put(TOKEN, "current-token-1", admin, kind="tokens")
    settings = runtime.settings
    runtime.close()
    _downgrade_and_forge(settings)
    record = store_record_path(settings.store_file)
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "schema_version": 1}))  # the MAC no longer matches
    settings.anchor_file.unlink()
    with pytest.raises(IntegrityError, match="holds a format record"):
        open_runtime(settings)
    assert _schema_version(settings.store_file) == 1


def test_a_current_store_renews_a_missing_record(runtime: Runtime, admin: RunIdentity) -> None:
    """Homes set up before records existed get one on their next open; a current store opens as before."""
    settings = runtime.settings
    record = store_record_path(settings.store_file)
    assert record.exists() and record.stat().st_mode & 0o077 == 0
    runtime.close()
    record.unlink()
    rt = open_runtime(settings)
    try:
        assert FormatRecorder(rt.keyring, store_scope(rt.local.store_id)).read(record).schema_version == SCHEMA_VERSION
    finally:
        rt.close()
