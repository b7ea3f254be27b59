"""The ``postgres`` rotator against a real PostgreSQL server: alternating users, real logins.

The admin is not a superuser (CREATEROLE plus ADMIN OPTION on the parent
role), so these tests also prove that is enough.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest

from runlease.errors import BackendError
from runlease.ledger.base import AuditQuery
from runlease.models import Outcome, Stage
from runlease.rotation import RotationEngine, RotationTestFailed, Status, Step
from support.homes import make_runtime
from support.postgres import PostgresServer

from rotation_support import ADMIN, leaks, pg_login, postgres_target, set_policy, trail_text, values_of


@pytest.fixture
def rt(tmp_path: Path):
    runtime = make_runtime(tmp_path / "home")
    yield runtime
    runtime.close()


def login_error(conn: dict) -> str:
    try:
        psycopg.connect(host=str(conn["host"]), port=str(conn["port"]), dbname=str(conn["schema"]),
                        user=str(conn["login"]), password=str(conn["password"]), connect_timeout=10).close()
    except psycopg.OperationalError as err:
        return str(err)
    return ""


def can_login(server: PostgresServer, role: str) -> bool:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        return bool(c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0])


def test_alternating_users_rotate_and_retire(rt, postgres_server: PostgresServer, pg_database: str) -> None:
    target = postgres_target(rt, postgres_server, pg_database)
    role = target.extra["role"]
    engine = RotationEngine(rt.broker)
    v1 = rt.store.get(target.path).value
    engine.rotate(target.path, ADMIN)
    v2 = rt.store.get(target.path).value
    assert (v1["login"], v2["login"]) == (role, f"{role}_clone")
    assert pg_login(v1) and pg_login(v2)  # grace: both log in, and the clone has the parent's grants
    engine.retire(target.path, ADMIN)
    assert "password authentication failed" in login_error(v1)  # retire really disabled the old role:
    assert not can_login(postgres_server, role)                   # no password, and NOLOGIN
    assert pg_login(v2)
    engine.rotate(target.path, ADMIN)  # alternates back to the original role, new password
    v3 = rt.store.get(target.path).value
    assert v3["login"] == role and v3["password"] != v1["password"]
    assert pg_login(v2) and pg_login(v3)
    engine.retire(target.path, ADMIN)
    assert login_error(v2) and not can_login(postgres_server, f"{role}_clone") and pg_login(v3)
    assert "password authentication failed" in login_error(v1)  # v1's password is gone for good


def test_no_password_reaches_the_server_log_the_audit_trail_or_logs(
    rt, postgres_server: PostgresServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = postgres_target(rt, postgres_server, pg_database)
    engine = RotationEngine(rt.broker)
    for _ in range(2):
        engine.rotate(target.path, ADMIN)
        engine.retire(target.path, ADMIN)
    values = [v for v in values_of(rt, target.path)]
    assert len(values) == 3
    new_passwords = values[1:]  # the first one the test itself created with a plain CREATE ROLE
    assert leaks(new_passwords, postgres_server.log_text()) == []
    assert "SCRAM-SHA-256$" in postgres_server.log_text()  # what the server saw instead
    assert leaks(values, trail_text(rt), caplog.text) == []


def test_a_failed_test_leaves_current_working_and_discards_pending(
    rt, postgres_server: PostgresServer, pg_database: str
) -> None:
    target = postgres_target(rt, postgres_server, pg_database)
    role = target.extra["role"]
    engine = RotationEngine(rt.broker)
    current = rt.store.get(target.path).value
    state = engine.start(target.path, ADMIN)
    for step in (Step.CREATE, Step.SET):
        state = engine.run_step(target.path, ADMIN, step, state.token)
    pending = rt.store.get(target.path, stage=Stage.PENDING).value
    postgres_server.execute(f'ALTER ROLE "{role}_clone" NOLOGIN')  # the target breaks between set and test
    with pytest.raises(RotationTestFailed, match=r"refused the PENDING login.*CURRENT v1 is unchanged and PENDING v2"):
        engine.run_step(target.path, ADMIN, Step.TEST, state.token)
    failed = engine.state(target.path)
    assert failed.status is Status.FAILED and "not permitted to log in" in failed.reason
    assert rt.store.info(target.path).stages == {Stage.CURRENT: 1}
    assert rt.store.history(target.path)[1].deprecated
    assert pg_login(current)
    assert not pg_login(pending)
    assert leaks([pending["password"], current["password"]], failed.reason, trail_text(rt)) == []
    events = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.outcome is Outcome.ERROR]
    assert [(e.detail["step"], e.version) for e in events] == [("test", 2)]
    assert engine.rotate(target.path, ADMIN).status is Status.GRACE  # the next rotation works again
    assert pg_login(rt.store.get(target.path).value)


def test_an_unreachable_target_leaves_the_step_to_retry(
    rt, postgres_server: PostgresServer, pg_database: str, closed_port: int
) -> None:
    target = postgres_target(rt, postgres_server, pg_database)
    admin_path = rt.store.resolve(target.path).metadata["rotation"]["settings"]["admin"]
    admin = rt.store.get(admin_path).value
    rt.broker.put(admin_path, {**admin, "port": closed_port}, ADMIN)
    engine = RotationEngine(rt.broker)
    state = engine.start(target.path, ADMIN)
    state = engine.run_step(target.path, ADMIN, Step.CREATE, state.token)
    with pytest.raises(BackendError, match="cannot connect"):
        engine.run_step(target.path, ADMIN, Step.SET, state.token)
    assert engine.state(target.path).step is Step.CREATE  # not failed: a retry can go on
    errors = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.outcome is Outcome.ERROR]
    assert [(e.detail["step"], e.detail["error"]) for e in errors] == [("set", "BackendError")]
    rt.broker.put(admin_path, admin, ADMIN)
    assert engine.rotate(target.path, ADMIN).status is Status.GRACE
    assert pg_login(rt.store.get(target.path).value)


def test_a_login_that_is_neither_role_nor_clone_is_refused(
    rt, postgres_server: PostgresServer, pg_database: str
) -> None:
    target = postgres_target(rt, postgres_server, pg_database)
    settings = rt.store.resolve(target.path).metadata["rotation"]["settings"]
    set_policy(rt, target.path, "postgres", **{**settings, "role": "someone_else"})
    with pytest.raises(Exception, match="neither 'someone_else' nor 'someone_else_clone'"):
        RotationEngine(rt.broker).rotate(target.path, ADMIN)
