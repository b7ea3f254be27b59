"""The postgres issuer against a real PostgreSQL server: roles, VALID UNTIL, revoke, renew, errors.

The admin is deliberately *not* a superuser: CREATEROLE, pg_signal_backend
and the parent role WITH ADMIN OPTION, the least privileges docs/issuers.md
names, so these tests also prove that set is enough. The parent role's name
needs quoting ("Analytics Readers ..."), so identifier quoting is exercised
on every test.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from runlease.errors import BackendError, ConfigError, IntegrityError, SecretNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, SecretPath, utcnow
from runlease.runtime import Runtime
from support.homes import identity, make_runtime, raw_files
from support.postgres import PostgresServer

PATH = SecretPath.parse("dev/connections/warehouse")


@dataclass
class PgSetup:
    server: PostgresServer
    dbname: str
    admin: str
    admin_password: str
    parent: str
    rt: Runtime

    def admin_conn(self) -> dict[str, object]:
        return {"conn_type": "postgres", "host": self.server.host, "port": self.server.port,
                "login": self.admin, "password": self.admin_password, "schema": self.dbname,
                "extra": {"sslmode": "disable"}}

    def superuser(self) -> psycopg.Connection:
        return psycopg.connect(self.server.dsn(self.dbname), autocommit=True)

    def role_row(self, role: str) -> tuple | None:
        with self.superuser() as c:
            return c.execute("SELECT rolcanlogin, rolvaliduntil, rolsuper, rolcreaterole, rolcreatedb "
                             "FROM pg_roles WHERE rolname = %s", (role,)).fetchone()

    def login(self, conn: dict[str, object]) -> psycopg.Connection:
        return psycopg.connect(host=str(conn["host"]), port=str(conn["port"]), dbname=str(conn["schema"]),
                               user=str(conn["login"]), password=str(conn["password"]), connect_timeout=10,
                               autocommit=True)


@pytest.fixture
def pg(postgres_server: PostgresServer, pg_database: str, tmp_path: Path) -> Iterator[PgSetup]:
    tag = secrets.token_hex(4)
    admin, admin_pw, parent = f"rl_admin_{tag}", secrets.token_urlsafe(18), f"Analytics Readers {tag}"
    postgres_server.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(admin), sql.Literal(admin_pw)),
        sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(admin)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(parent)),
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(parent), sql.Identifier(admin)),
    )
    postgres_server.execute(
        "CREATE TABLE facts (id int PRIMARY KEY, label text)",
        "INSERT INTO facts VALUES (1, 'one'), (2, 'two')",
        sql.SQL("GRANT SELECT ON facts TO {}").format(sql.Identifier(parent)),
        "CREATE SCHEMA work",
        sql.SQL("GRANT USAGE, CREATE ON SCHEMA work TO {}").format(sql.Identifier(parent)),
        dbname=pg_database,
    )
    rt = make_runtime(tmp_path / "home")
    setup = PgSetup(postgres_server, pg_database, admin, admin_pw, parent, rt)
    rt.broker.put(PATH, setup.admin_conn(), identity())
    rt.store.update_metadata(PATH, {"issuer": "postgres", "parent_role": parent})
    try:
        yield setup
    finally:
        rt.close()
        postgres_server.execute(f'DROP DATABASE IF EXISTS "{pg_database}" WITH (FORCE)')
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as c:
            leftovers = [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'rl\\_rl%%'")]
            for role in [*leftovers, admin, parent]:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_leased_role_can_do_what_the_parent_grants_and_nothing_more(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=300)
    cred = lease.value
    assert isinstance(cred, dict)
    role = cred["login"]
    assert role == f"rl_{lease.lease_id}" and lease.issuer_state["role"] == role
    assert (cred["host"], cred["port"], cred["schema"]) == (pg.server.host, pg.server.port, pg.dbname)
    assert cred["extra"] == {"sslmode": "disable"}
    assert cred["password"] != pg.admin_password and len(cred["password"]) >= 40

    can_login, valid_until, is_super, create_role, create_db = pg.role_row(role)
    assert can_login and not (is_super or create_role or create_db)
    assert valid_until == lease.expires_at  # VALID UNTIL is the lease expiry, to the microsecond

    with pg.login(cred) as conn:
        assert conn.execute("SELECT count(*) FROM facts").fetchone() == (2,)
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO facts VALUES (3, 'three')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"x_{secrets.token_hex(3)}")))


def test_revoke_terminates_the_open_session_and_drops_the_role(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=300)
    cred = lease.value
    session = pg.login(cred)
    assert session.execute("SELECT 1").fetchone() == (1,)

    assert pg.rt.broker.revoke(lease.lease_id, "task ended") is True
    assert pg.role_row(cred["login"]) is None
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")  # terminated by revoke, not merely unable to reconnect
    session.close()
    with pytest.raises(psycopg.OperationalError):
        pg.login(cred)

    # Idempotent: the broker reports "nothing to do", the issuer itself tolerates a missing role.
    assert pg.rt.broker.revoke(lease.lease_id) is False
    pg.rt.broker.issuers.get("postgres").revoke(pg.rt.ledger.get_lease(lease.lease_id))
    assert pg.rt.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED


def test_login_is_refused_once_valid_until_has_passed(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=2)
    cred = lease.value
    with pg.login(cred) as conn:  # works while valid
        conn.execute("SELECT 1")
    wait = (lease.expires_at - utcnow()).total_seconds() + 1.0
    time.sleep(max(wait, 0))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.login(cred)
    assert pg.role_row(cred["login"]) is not None  # refused by VALID UNTIL, not because it is gone
    assert pg.rt.broker.sweep_expired() == 1  # the TTL backstop then drops it
    assert pg.role_row(cred["login"]) is None


def test_a_role_that_created_objects_hands_them_to_the_parent_and_is_dropped(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=300)
    cred = lease.value
    with pg.login(cred) as conn:
        conn.execute("CREATE TABLE work.scratch (x int)")
    pg.rt.broker.revoke(lease.lease_id)
    assert pg.role_row(cred["login"]) is None
    with pg.superuser() as c:
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'work' AND tablename = 'scratch'")
        assert owner.fetchone() == (pg.parent,)


def test_renew_moves_valid_until_and_the_ledger_expiry_together(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=60)
    renewed = pg.rt.broker.renew(lease.lease_id, 900)
    assert renewed.expires_at > lease.expires_at
    assert pg.role_row(lease.value["login"])[1] == renewed.expires_at
    assert pg.rt.ledger.get_lease(lease.lease_id).expires_at == renewed.expires_at
    events = list(pg.rt.ledger.events(AuditQuery(action="renew")))
    assert [e.lease_id for e in events] == [lease.lease_id] and events[0].detail["ttl_s"] == 900


def test_the_password_never_reaches_the_server_log_the_ledger_or_python_logs(
    pg: PgSetup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lease = pg.rt.broker.lease(PATH, identity(), ttl=300)
    password = lease.value["password"]
    pg.rt.broker.renew(lease.lease_id, 600)
    pg.rt.broker.revoke(lease.lease_id)

    server_log = pg.server.log_text()
    role = lease.value["login"]
    assert f'CREATE ROLE "{role}"' in server_log or f"CREATE ROLE {role}" in server_log  # log_statement=all is on
    assert "SCRAM-SHA-256$" in server_log  # what the server saw instead of the password
    assert password not in server_log
    assert password not in caplog.text
    assert password.encode() not in raw_files(pg.rt.settings.home)
    stored = pg.rt.ledger.get_lease(lease.lease_id)
    assert password not in json.dumps(stored.model_dump(mode="json"))
    assert password not in "".join(e.model_dump_json() for e in pg.rt.ledger.events(AuditQuery()))
    assert password not in repr(lease) and password not in str(lease.model_dump())


def test_missing_parent_role_is_a_clear_error_and_nothing_is_created(pg: PgSetup) -> None:
    path = SecretPath.parse("dev/connections/no_parent")
    pg.rt.broker.put(path, pg.admin_conn(), identity())
    pg.rt.store.update_metadata(path, {"issuer": "postgres"})
    with pytest.raises(ConfigError, match="dev/connections/no_parent.*parent_role: missing"):
        pg.rt.broker.lease(path, identity())
    assert pg.rt.ledger.find_leases() == []


def test_a_parent_role_that_does_not_exist_fails_without_leaving_a_role(pg: PgSetup) -> None:
    pg.rt.store.update_metadata(PATH, {"parent_role": "no_such_parent"})
    with pytest.raises(BackendError, match='creating role rl_rl[0-9a-f]+ on PostgreSQL for dev/connections/warehouse'):
        pg.rt.broker.lease(PATH, identity())
    with pg.superuser() as c:
        assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'rl\\_rl%%'").fetchone() == (0,)
    assert pg.rt.ledger.find_leases() == []


@pytest.mark.parametrize("failure", ["refused", "silent", "wrong_password"])
def test_unreachable_or_refusing_server_is_a_bounded_clear_error_without_the_password(
    pg: PgSetup, failure: str, closed_port: int, silent_server: int
) -> None:
    conn = pg.admin_conn()
    if failure == "refused":
        conn["port"] = closed_port
    elif failure == "silent":
        conn["port"] = silent_server
    else:
        conn["password"] = "Wrong-" + secrets.token_urlsafe(12)
    pg.rt.broker.put(PATH, conn, identity())
    pg.rt.store.update_metadata(PATH, {"connect_timeout": 2})
    with pytest.raises(BackendError) as info:
        pg.rt.broker.lease(PATH, identity())
    message = str(info.value)
    assert f"127.0.0.1:{conn['port']}/{pg.dbname} as {pg.admin}" in message
    assert {"refused": "Connection refused", "silent": "no answer within 2 s",
            "wrong_password": "password authentication failed"}[failure] in message
    assert str(conn["password"]) not in message and str(conn["password"]) not in repr(info.value)
    assert pg.rt.ledger.find_leases() == []


def test_cli_put_with_issuer_options_then_lease(pg: PgSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from runlease.cli.main import app

    monkeypatch.setenv("RUNLEASE_HOME", str(pg.rt.settings.home))
    runner = CliRunner()
    conn_json = json.dumps(pg.admin_conn())
    bad = runner.invoke(app, ["put", "dev/connections/cli_pg", "--stdin", "--issuer", "postgres"], input=conn_json)
    assert bad.exit_code == 2 and "parent_role: missing" in bad.output
    with pytest.raises(SecretNotFoundError):
        pg.rt.store.info(SecretPath.parse("dev/connections/cli_pg"))  # refused before anything was written
    secretish = runner.invoke(app, ["put", "dev/connections/cli_pg", "--stdin", "--issuer", "postgres",
                                    "--issuer-opt", "password=hunter2"], input=conn_json)
    assert secretish.exit_code == 2 and "credentials belong in the secret's value" in secretish.output
    ok = runner.invoke(app, ["put", "dev/connections/cli_pg", "--stdin", "--issuer", "postgres",
                             "--issuer-opt", f"parent_role={pg.parent}"], input=conn_json)
    assert ok.exit_code == 0, ok.output
    leased = runner.invoke(app, ["lease", "dev/connections/cli_pg", "--ttl", "120", "--run-id", "r1", "--reveal"])
    assert leased.exit_code == 0, leased.output
    cred = json.loads(leased.output[leased.output.index("{\n"):])
    with pg.login(cred) as conn:
        assert conn.execute("SELECT count(*) FROM facts").fetchone() == (2,)
    revoked = runner.invoke(app, ["revoke", "--run-id", "r1"])
    assert revoked.exit_code == 0 and "revoked 1 lease" in revoked.output
    assert pg.role_row(cred["login"]) is None


def test_role_names_are_plain_identifiers_derived_from_the_lease() -> None:
    from runlease.broker import new_lease_id
    from runlease.issuers.postgres import role_name

    for _ in range(200):
        lease_id = new_lease_id()
        name = role_name("rl_", lease_id)
        assert name == f"rl_{lease_id}" and len(name) <= 63 and name.isidentifier() and name == name.lower()
    with pytest.raises(ConfigError):
        role_name("rl_", 'x"; DROP ROLE postgres; --')


def test_a_tampered_ledger_cannot_make_revoke_drop_another_role(pg: PgSetup) -> None:
    lease = pg.rt.broker.lease(PATH, identity(), ttl=300)
    forged = pg.rt.ledger.get_lease(lease.lease_id).model_copy(
        update={"issuer_state": {**lease.issuer_state, "role": pg.admin}})
    with pytest.raises(IntegrityError, match="not the one this issuer mints"):
        pg.rt.broker.issuers.get("postgres").revoke(forged)
    assert pg.role_row(pg.admin) is not None
    pg.rt.broker.revoke(lease.lease_id)
