"""Forged lease rows against a real PostgreSQL: on both ledgers, no role is ever touched.

The attacker of issue #12 writes the ledger without the key -- plain sqlite3
on the home's file, or the PostgreSQL ledger's *writer* role (what every
worker holds) -- and plants a lease whose ``issuer_state`` names a role that
exists (here ``victim_*``, a login role with an open session). Before, the
next ``sweep`` disabled it, terminated its sessions and dropped it. Now the
row fails authentication: nothing is called, the victim keeps its login and
its session, and the tampering is in the audit trail.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from runlease.errors import IntegrityError
from runlease.ledger.base import AuditQuery
from runlease.ledger.postgres import writer_grants
from runlease.models import Lease, LeaseState, SecretPath, utcnow
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings
from support.homes import identity, make_runtime
from support.postgres import PostgresServer

PATH = SecretPath.parse("dev/connections/warehouse")


@dataclass
class Target:
    server: PostgresServer
    dbname: str
    admin: str
    admin_password: str
    parent: str
    victim: str
    victim_password: str

    def admin_conn(self) -> dict[str, object]:
        return {"conn_type": "postgres", "host": self.server.host, "port": self.server.port, "login": self.admin,
                "password": self.admin_password, "schema": self.dbname, "extra": {"sslmode": "disable"}}

    def victim_session(self) -> psycopg.Connection:
        return psycopg.connect(host=self.server.host, port=self.server.port, dbname=self.dbname, user=self.victim,
                               password=self.victim_password, connect_timeout=10, autocommit=True)

    def victim_can_login(self) -> bool | None:
        with psycopg.connect(self.server.dsn(self.dbname), autocommit=True) as c:
            row = c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (self.victim,)).fetchone()
        return None if row is None else bool(row[0])


@pytest.fixture
def target(postgres_server: PostgresServer, pg_database: str) -> Iterator[Target]:
    tag = secrets.token_hex(4)
    t = Target(postgres_server, pg_database, f"rl_admin_{tag}", secrets.token_urlsafe(18), f"readers_{tag}",
               f"victim_{tag}", secrets.token_urlsafe(18))
    postgres_server.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(t.admin),
                                                                       sql.Literal(t.admin_password)),
        sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(t.admin)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(t.parent)),
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(t.parent), sql.Identifier(t.admin)),
        # The victim is even inside the parent role: only the lease id ties a role to a lease.
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(t.victim), sql.Literal(t.victim_password), sql.Identifier(t.parent)),
    )
    try:
        yield t
    finally:
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')
        for role in (t.victim, t.parent, t.admin):
            postgres_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _setup(rt: Runtime, t: Target) -> Lease:
    rt.broker.put(PATH, t.admin_conn(), identity())
    rt.store.update_metadata(PATH, {"issuer": "postgres", "parent_role": t.parent})
    return rt.broker.lease(PATH, identity(run_id="genuine"), ttl=1)


def _forged_values(lease_id: str, victim: str) -> dict[str, object]:
    past = utcnow() - timedelta(hours=2)
    return dict(lease_id=lease_id, path=str(PATH), version=1, stage="CURRENT", issuer="postgres",
                orchestrator="airflow", pipeline="evil", run_id="r-evil", task_id="t", try_number=1,
                map_index=None, principal=None, issued_at=past, expires_at=past, state="active", revoked_at=None,
                revoke_reason=None,
                issuer_state={"role": victim, "role_prefix": "", "parent_role": victim})


def _assert_victim_untouched(t: Target, session: psycopg.Connection) -> None:
    assert t.victim_can_login() is True
    assert session.execute("SELECT current_user").fetchone() == (t.victim,)  # session not terminated


def _assert_sweep_refuses(rt: Runtime, genuine: Lease, forged_ids: set[str]) -> None:
    with pytest.raises(IntegrityError, match="failed authentication"):
        rt.broker.sweep_expired(utcnow() + timedelta(hours=1))
    assert rt.ledger.get_lease(genuine.lease_id).state is LeaseState.EXPIRED  # genuine one still handled
    errors = {e.lease_id for e in rt.ledger.events(AuditQuery(action="expire")) if e.outcome.value == "error"}
    assert errors == forged_ids
    assert rt.ledger.verify().ok  # the chain itself is intact; the tampering is recorded in it


def test_forged_lease_in_the_sqlite_ledger_touches_no_role(target: Target, tmp_path: Path) -> None:
    rt = make_runtime(tmp_path / "home")
    session = target.victim_session()
    try:
        genuine = _setup(rt, target)
        with sqlite3.connect(rt.settings.store_file, isolation_level=None) as db:
            genuine_mac = db.execute("SELECT mac FROM leases WHERE lease_id=?", (genuine.lease_id,)).fetchone()[0]
            for lease_id, mac in (("rl" + "a" * 24, None), ("rl" + "b" * 24, genuine_mac)):
                v = _forged_values(lease_id, target.victim)
                v.update(issued_at=v["issued_at"].isoformat(), expires_at=v["expires_at"].isoformat(),  # type: ignore[union-attr]
                         issuer_state=json.dumps(v["issuer_state"]), mac=mac)
                db.execute(f"INSERT INTO leases({', '.join(v)}) VALUES ({', '.join('?' * len(v))})", tuple(v.values()))
        _assert_sweep_refuses(rt, genuine, {"rl" + "a" * 24, "rl" + "b" * 24})
        _assert_victim_untouched(target, session)
    finally:
        session.close()
        rt.close()


def test_forged_lease_by_the_postgres_writer_role_touches_no_role(target: Target, tmp_path: Path) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    schema = f"rl_{secrets.token_hex(4)}"
    owner_dsn = target.server.dsn(target.dbname)
    make_runtime(tmp_path / "owner", master_key=key, ledger="postgres", ledger_dsn=owner_dsn,
                 ledger_schema=schema).close()
    writer, writer_pw = f"rl_writer_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    target.server.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(writer),
                                                                             sql.Literal(writer_pw)))
    with psycopg.connect(owner_dsn, autocommit=True) as c:
        for statement in writer_grants(schema, writer):
            c.execute(statement)
    writer_dsn = target.server.dsn(target.dbname, user=writer, password=writer_pw)
    rt = open_runtime(Settings(home=tmp_path / "owner", master_key=key, ledger="postgres", ledger_dsn=writer_dsn,
                               ledger_schema=schema))
    session = target.victim_session()
    leases = sql.SQL("{}.leases").format(sql.Identifier(schema))
    try:
        genuine = _setup(rt, target)
        with psycopg.connect(writer_dsn, autocommit=True) as w:
            genuine_mac = w.execute(sql.SQL("SELECT mac FROM {} WHERE lease_id = %s").format(leases),
                                    (genuine.lease_id,)).fetchone()[0]
            for lease_id, mac in (("rl" + "c" * 24, None), ("rl" + "d" * 24, genuine_mac)):
                v = _forged_values(lease_id, target.victim)
                v.update(issuer_state=Jsonb(v["issuer_state"]), mac=mac)
                w.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    leases, sql.SQL(", ").join(map(sql.Identifier, v)), sql.SQL(", ").join(sql.Placeholder() * len(v))),
                    tuple(v.values()))
            # The writer cannot rewrite what a genuine lease says (column-level UPDATE grant) ...
            for column in ("issuer_state", "path", "pipeline", "run_id", "issuer"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    w.execute(sql.SQL("UPDATE {} SET {} = {} WHERE lease_id = %s").format(
                        leases, sql.Identifier(column), sql.Identifier(column)), (genuine.lease_id,))
            # ... nor delete leases.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                w.execute(sql.SQL("DELETE FROM {}").format(leases))
        _assert_sweep_refuses(rt, genuine, {"rl" + "c" * 24, "rl" + "d" * 24})
        _assert_victim_untouched(target, session)
    finally:
        session.close()
        rt.close()
        target.server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(writer)), dbname=target.dbname)
        target.server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(writer)))


def test_the_issuer_re_derives_the_role_even_from_an_authentic_row(target: Target, tmp_path: Path) -> None:
    """Defence in depth: a lease that *is* authentic but whose state names another role (or a
    malformed lease id) is refused by the issuer itself, with options from the secret's metadata."""
    rt = make_runtime(tmp_path / "home")
    session = target.victim_session()
    try:
        genuine = _setup(rt, target)
        issuer = rt.broker.issuers.get("postgres")
        for lease in (
            genuine.model_copy(update={"issuer_state": {**genuine.issuer_state, "role": target.victim}}),
            genuine.model_copy(update={"lease_id": "x", "issuer_state": {
                "role": target.victim, "role_prefix": "", "parent_role": target.parent}}),
            # role_prefix and parent_role recorded in the row are not what the issuer uses:
            genuine.model_copy(update={"issuer_state": {"role": target.victim, "role_prefix": target.victim[:-8],
                                                        "parent_role": target.parent}}),
        ):
            with pytest.raises(IntegrityError):
                issuer.revoke(lease)
        _assert_victim_untouched(target, session)
        # A role with the minted name but an attribute a minted role never has is not touched either.
        impostor = "rl_rl" + "f" * 24
        target.server.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB IN ROLE {}").format(
            sql.Identifier(impostor), sql.Identifier(target.parent)))
        try:
            fake = genuine.model_copy(update={"lease_id": "rl" + "f" * 24,
                                              "issuer_state": {"role": impostor}})
            with pytest.raises(IntegrityError, match="not one this issuer minted"):
                issuer.revoke(fake)
            with psycopg.connect(target.server.dsn(target.dbname), autocommit=True) as c:
                assert c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (impostor,)).fetchone() == (True,)
        finally:
            target.server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(impostor)))
        assert rt.broker.revoke(genuine.lease_id) is True  # the genuine lease still revokes normally
    finally:
        session.close()
        rt.close()


def test_a_version_1_postgres_ledger_is_upgraded_by_its_owner(postgres_server: PostgresServer, pg_database: str,
                                                               tmp_path: Path) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    schema = f"rl_{secrets.token_hex(4)}"
    dsn = postgres_server.dsn(pg_database)
    settings = Settings(home=tmp_path / "home", master_key=key, ledger="postgres", ledger_dsn=dsn, ledger_schema=schema)
    rt = make_runtime(tmp_path / "home", master_key=key, ledger="postgres", ledger_dsn=dsn, ledger_schema=schema)
    rt.broker.put(PATH, {"conn_type": "http", "host": "h", "password": "Legacy-Ledger-Pa55"}, identity())  # runlease: allow secret-assignment (test fixture)
    lease = rt.broker.lease(PATH, identity())
    rt.close()
    s = sql.Identifier(schema)
    postgres_server.execute(sql.SQL("ALTER TABLE {}.leases DROP COLUMN mac").format(s),
                            sql.SQL("UPDATE {}.meta SET value = '1' WHERE key = 'schema_version'").format(s),
                            # A genuine old ledger has no format record, here or in the machine's home.
                            sql.SQL("DELETE FROM {}.meta WHERE key = 'format_record'").format(s),
                            dbname=pg_database)
    for evidence in (*(tmp_path / "home").glob("ledger.*.format"), *(tmp_path / "home").glob("audit.*.anchor")):
        evidence.unlink()
    writer, writer_pw = f"rl_writer_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    postgres_server.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(writer),
                                                                               sql.Literal(writer_pw)))
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, sql.Identifier(writer)))
            c.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, sql.Identifier(writer)))
        from runlease.errors import ConfigError

        writer_dsn = postgres_server.dsn(pg_database, user=writer, password=writer_pw)
        with pytest.raises(ConfigError, match="owns it to upgrade"):
            open_runtime(Settings(home=tmp_path / "home", master_key=key, ledger="postgres", ledger_dsn=writer_dsn,
                                  ledger_schema=schema))
        rt = open_runtime(settings)  # the owner upgrades in place
        try:
            assert rt.ledger.get_lease(lease.lease_id).state is LeaseState.ACTIVE
            assert rt.broker.revoke(lease.lease_id) is True
            assert rt.ledger.verify().ok
            assert rt.ledger.recorder.read(rt.ledger.record_file).schema_version == 2
        finally:
            rt.close()
    finally:
        postgres_server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(writer)), dbname=pg_database)
        postgres_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(writer)))


@pytest.mark.parametrize("attack", ["issuer-to-static", "current-back-to-v1", "undelete"])
def test_store_attacks_with_the_postgres_ledger_serve_nothing_and_are_audited_there(
        postgres_server: PostgresServer, pg_database: str, tmp_path: Path, attack: str) -> None:
    """The store is the home's SQLite file whichever ledger is used; the tampering lands in the shared ledger."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    rt = make_runtime(tmp_path / "home", master_key=key, ledger="postgres", ledger_dsn=postgres_server.dsn(pg_database),
                      ledger_schema=f"rl_{secrets.token_hex(4)}")
    try:
        admin = identity(run_id="admin")
        rt.broker.put(PATH, {"conn_type": "postgres", "host": "h", "login": "admin", "password": "PgLedger-Admin-1"}, admin)  # runlease: allow secret-assignment (test fixture)
        rt.broker.put(PATH, {"conn_type": "postgres", "host": "h", "login": "admin", "password": "PgLedger-Admin-2"}, admin)  # runlease: allow secret-assignment (test fixture)
        rt.store.update_metadata(PATH, {"issuer": "postgres", "parent_role": "readers"})
        if attack == "undelete":
            rt.broker.delete(PATH, admin)
        with sqlite3.connect(rt.settings.store_file, isolation_level=None) as db:
            if attack == "issuer-to-static":
                db.execute("UPDATE secrets SET metadata='{\"issuer\": \"static\"}'")
            elif attack == "current-back-to-v1":
                db.execute("UPDATE stages SET version=1 WHERE stage='CURRENT'")
            else:
                db.execute("UPDATE secrets SET deleted_at=NULL")
        with pytest.raises(IntegrityError):
            rt.broker.lease(PATH, identity())
        assert rt.ledger.find_leases() == []
        [event] = [e for e in rt.ledger.events(AuditQuery(action="lease")) if e.outcome.value == "error"]
        assert event.detail["table"] == "secrets" and event.path == str(PATH)
        assert rt.ledger.verify().ok
    finally:
        rt.close()


@pytest.mark.parametrize("evidence", ["home-record", "home-anchor-only", "meta-row-only"])
def test_a_downgraded_postgres_ledger_is_refused_not_upgraded(target: Target, tmp_path: Path, evidence: str) -> None:
    """The owner-level attacker rewrites the ledger into the pre-MAC format and forges a lease naming the victim.

    Before, the next open "upgraded" it and signed the forged row, and the next
    sweep dropped the victim. Now the open refuses it (exit 7) and audits the refusal.
    """
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    schema = f"rl_{secrets.token_hex(4)}"
    dsn = target.server.dsn(target.dbname)
    home = tmp_path / "home"
    settings = Settings(home=home, master_key=key, ledger="postgres", ledger_dsn=dsn, ledger_schema=schema)
    rt = make_runtime(home, master_key=key, ledger="postgres", ledger_dsn=dsn, ledger_schema=schema)
    session = target.victim_session()
    try:
        _setup(rt, target)
        rt.close()
        s = sql.Identifier(schema)
        target.server.execute(sql.SQL("ALTER TABLE {}.leases DROP COLUMN mac").format(s),
                              sql.SQL("UPDATE {}.meta SET value = '1' WHERE key = 'schema_version'").format(s),
                              dbname=target.dbname)
        if evidence != "meta-row-only":
            target.server.execute(sql.SQL("DELETE FROM {}.meta WHERE key = 'format_record'").format(s),
                                  dbname=target.dbname)
        if evidence != "home-record":
            [record] = home.glob("ledger.*.format")
            record.unlink()
        if evidence == "meta-row-only":
            [anchor] = home.glob("audit.*.anchor")
            anchor.unlink()
        with psycopg.connect(dsn, autocommit=True) as c:
            v = _forged_values("rl" + "e" * 24, target.victim)
            v.update(issuer_state=Jsonb(v["issuer_state"]))
            c.execute(sql.SQL("INSERT INTO {}.leases ({}) VALUES ({})").format(
                s, sql.SQL(", ").join(map(sql.Identifier, v)), sql.SQL(", ").join(sql.Placeholder() * len(v))),
                tuple(v.values()))

        with pytest.raises(IntegrityError, match="pre-MAC format"):
            open_runtime(settings)
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(s)
                             ).fetchone() == ("1",)  # never upgraded
            columns = {r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_schema = %s AND table_name = 'leases'", (schema,))}
            assert "mac" not in columns  # the forged row was never signed
            refused = c.execute(sql.SQL("SELECT outcome, detail FROM {}.audit WHERE action = 'ledger_open'").format(s)
                                ).fetchall()
        assert refused and refused[-1][0] == "error" and "StoreDowngradedError" in refused[-1][1]
        _assert_victim_untouched(target, session)
    finally:
        session.close()
