"""The shared PostgreSQL ledger across "machines": separate homes that share one ledger and one KEK.

Each home stands for a worker machine (its own local store and anchor
file); what they share is the ledger's DSN and the master key, as in a real
deployment with a central store.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.keys.crypto import Keyring
from runlease.errors import BackendError, ConfigError, MasterKeyError
from runlease.ledger.base import AuditQuery
from runlease.ledger.postgres import PostgresLedger, writer_grants
from runlease.models import LeaseState, SecretPath
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings
from support.homes import identity, make_runtime
from support.postgres import PostgresServer

PATH = SecretPath.parse("dev/connections/warehouse")
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": "Shared-Ledger-Pa55", "port": 5432}  # runlease: allow secret-assignment (test fixture)
WORKER = Path(__file__).resolve().parents[1] / "support" / "ledger_worker.py"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Shared:
    server: PostgresServer
    dbname: str
    schema: str
    key: str
    tmp: Path

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.dbname)

    def settings(self, machine: str, **overrides: object) -> Settings:
        fields: dict[str, object] = dict(home=self.tmp / machine, master_key=self.key, ledger="postgres",
                                         ledger_dsn=self.dsn, ledger_schema=self.schema)
        fields.update(overrides)
        return Settings(**fields)  # type: ignore[arg-type]

    def machine(self, name: str) -> Runtime:
        rt = make_runtime(self.tmp / name, master_key=self.key, ledger="postgres", ledger_dsn=self.dsn,
                          ledger_schema=self.schema)
        rt.broker.put(PATH, CONN, identity())
        return rt

    def env(self, machine: str) -> dict[str, str]:
        return {**os.environ, "RUNLEASE_HOME": str(self.tmp / machine), "RUNLEASE_MASTER_KEY": self.key,
                "RUNLEASE_LEDGER": "postgres", "RUNLEASE_LEDGER_DSN": self.dsn,
                "RUNLEASE_LEDGER_SCHEMA": self.schema}


@pytest.fixture
def shared(postgres_server: PostgresServer, pg_database: str, tmp_path: Path) -> Shared:
    return Shared(postgres_server, pg_database, f"rl_{secrets.token_hex(4)}", new_key(), tmp_path)


def test_run_end_revocation_sees_leases_from_every_machine(shared: Shared) -> None:
    a, b = shared.machine("a"), shared.machine("b")
    try:
        a.broker.lease(PATH, identity(run_id="run-x", task_id="extract"))
        b.broker.lease(PATH, identity(run_id="run-x", task_id="load"))
        # The run ends; whichever machine handles it revokes both.
        assert a.broker.revoke_run("run-x", "run ended") == 2
        assert {lease.state for lease in b.ledger.find_leases(run_id="run-x")} == {LeaseState.REVOKED}
        trail = [e.action for e in b.ledger.events(AuditQuery(run_id="run-x"))]
        assert trail == ["lease", "lease", "revoke", "revoke"]
        assert a.ledger.verify().ok and b.ledger.verify().ok
    finally:
        a.close()
        b.close()


def test_cli_against_the_shared_ledger(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    for machine in ("m1", "m2"):
        for key, value in shared.env(machine).items():
            if key.startswith("RUNLEASE_"):
                monkeypatch.setenv(key, value)
        assert runner.invoke(app, ["init"]).exit_code == 0
        put = runner.invoke(app, ["put", "dev/connections/warehouse", "--stdin"], input=json.dumps(CONN))
        assert put.exit_code == 0, put.output
        leased = runner.invoke(app, ["lease", "dev/connections/warehouse", "--run-id", "cli-run"])
        assert leased.exit_code == 0, leased.output
    shown = runner.invoke(app, ["audit", "show", "--run-id", "cli-run"])  # from m2: sees m1's lease too
    assert shown.exit_code == 0 and shown.output.count("lease") >= 2
    revoked = runner.invoke(app, ["revoke", "--run-id", "cli-run"])
    assert revoked.exit_code == 0 and "revoked 2 lease(s)" in revoked.output
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and "audit chain OK" in verified.output
    doctor = runner.invoke(app, ["doctor"])
    assert doctor.exit_code == 0 and "FAIL" not in doctor.output, doctor.output
    assert CONN["password"] not in shown.output + revoked.output + verified.output


def test_a_worker_with_another_master_key_is_refused_before_writing(shared: Shared) -> None:
    shared.machine("a").close()
    with psycopg.connect(shared.dsn) as conn:
        before = conn.execute(sql.SQL("SELECT count(*) FROM {}.audit").format(sql.Identifier(shared.schema))).fetchone()
    with pytest.raises(MasterKeyError, match=r"master key does not match the PostgreSQL ledger at 127\.0\.0\.1:\d+/"):
        make_runtime(shared.tmp / "intruder", master_key=new_key(), ledger="postgres", ledger_dsn=shared.dsn,
                     ledger_schema=shared.schema)
    with psycopg.connect(shared.dsn) as conn:
        after = conn.execute(sql.SQL("SELECT count(*) FROM {}.audit").format(sql.Identifier(shared.schema))).fetchone()
    assert before == after


def test_writer_role_can_lease_but_cannot_rewrite_history(shared: Shared) -> None:
    owner = shared.machine("owner")  # the superuser creates and owns the tables
    owner.close()
    writer, password = f"rl_writer_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    shared.server.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(writer), sql.Literal(password)))
    try:
        with psycopg.connect(shared.dsn, autocommit=True) as conn:
            for statement in writer_grants(shared.schema, writer):
                conn.execute(statement)
        writer_dsn = shared.server.dsn(shared.dbname, user=writer, password=password)
        # A worker machine runs `init` with the writer role: no CREATE rights needed on a set-up schema.
        make_runtime(shared.tmp / "worker", master_key=shared.key, ledger="postgres", ledger_dsn=writer_dsn,
                     ledger_schema=shared.schema).close()
        rt = open_runtime(shared.settings("owner", ledger_dsn=writer_dsn))
        try:
            lease = rt.broker.lease(PATH, identity(run_id="w"))
            assert rt.broker.revoke(lease.lease_id)
            assert rt.ledger.verify().ok
        finally:
            rt.close()
        audit = sql.SQL("{}.audit").format(sql.Identifier(shared.schema))
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            for attack in ("DELETE FROM {} WHERE seq > 1", "UPDATE {} SET run_id = 'x'", "TRUNCATE {}"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL(attack).format(audit))
    finally:
        shared.server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(writer)), dbname=shared.dbname)
        shared.server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(writer)))


def test_cut_tail_with_a_rewritten_head_is_caught_by_the_writers_anchor_only(shared: Shared) -> None:
    """docs/ledger.md's limitation, demonstrated: only machines that wrote the cut events notice."""
    a = shared.machine("a")
    a.broker.lease(PATH, identity())
    a.broker.lease(PATH, identity())  # events 1 (write), 2, 3 from machine a
    s = sql.Identifier(shared.schema)
    with psycopg.connect(shared.dsn, autocommit=True) as conn:  # the owner role, acting as the attacker
        seq, chain = conn.execute(sql.SQL("SELECT seq, chain FROM {}.audit WHERE seq = 2").format(s)).fetchone()
        conn.execute(sql.SQL("DELETE FROM {}.audit WHERE seq > 2").format(s))
        conn.execute(sql.SQL("UPDATE {}.audit_head SET seq = %s, chain = %s").format(s), (seq, chain))
    result = a.ledger.verify()
    assert not result.ok and "truncated" in result.reason  # machine a's anchor remembers seq 3
    a.close()
    fresh = make_runtime(shared.tmp / "c", master_key=shared.key, ledger="postgres", ledger_dsn=shared.dsn,
                         ledger_schema=shared.schema)
    try:
        assert fresh.ledger.verify().ok  # a machine that never wrote those events cannot tell
    finally:
        fresh.close()


def test_postgres_ledger_without_a_dsn_is_a_clear_config_error(tmp_path: Path) -> None:
    from runlease.runtime import check_settings

    with pytest.raises(ConfigError, match="RUNLEASE_LEDGER=postgres needs RUNLEASE_LEDGER_DSN"):
        check_settings(Settings(home=tmp_path, ledger="postgres"))
    assert "Shared" not in repr(Settings(home=tmp_path, ledger_dsn="postgresql://u:Shared-Pw@h/db"))  # runlease: allow connection-uri-credentials (test fixture)


@pytest.mark.parametrize("failure", ["refused", "silent", "wrong_password", "no_schema"])
def test_unreachable_or_wrong_ledger_is_a_bounded_clear_error_without_the_password(
    shared: Shared, failure: str, closed_port: int, silent_server: int
) -> None:
    password = "Ledger-Pa55-" + secrets.token_urlsafe(8)
    port = {"refused": closed_port, "silent": silent_server}.get(failure, shared.server.port)
    dsn = f"postgresql://postgres:{password}@127.0.0.1:{port}/{shared.dbname}?connect_timeout=2"
    if failure == "no_schema":
        dsn = shared.dsn
    with pytest.raises((BackendError, ConfigError)) as info:
        PostgresLedger.open(dsn, Keyring([secrets.token_bytes(32)]), schema="not_initialized")
    message = str(info.value)
    expected = {"refused": "Connection refused", "silent": "no answer within 2 s",
                "wrong_password": "password authentication failed", "no_schema": "run `runlease init`"}[failure]
    assert expected in message and f"127.0.0.1:{port}/{shared.dbname}" in message
    assert password not in message and shared.server.password not in message


@pytest.mark.slow
def test_four_machines_500_leases_each_one_unbroken_chain(shared: Shared) -> None:
    """The core's concurrency scenario on PostgreSQL: 4 processes x 500 leases, no lost or forked event."""
    for name in ("w0", "w1", "w2", "w3"):
        shared.machine(name).close()
    start = shared.tmp / "go"
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), name, "500", str(start)], env=shared.env(name),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("w0", "w1", "w2", "w3")
    ]
    start.touch()
    try:
        outcomes = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outcomes]
    s = sql.Identifier(shared.schema)
    with psycopg.connect(shared.dsn) as conn:
        leases = conn.execute(sql.SQL("SELECT count(*) FROM {}.audit WHERE action = 'lease'").format(s)).fetchone()[0]
        per_machine = dict(conn.execute(sql.SQL(
            "SELECT principal, count(*) FROM {}.audit WHERE action = 'lease' GROUP BY principal").format(s)).fetchall())
        rows = conn.execute(sql.SQL("SELECT count(*), min(seq), max(seq) FROM {}.audit").format(s)).fetchone()
        lease_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}.leases").format(s)).fetchone()[0]
    assert leases == 2000 and lease_rows == 2000
    assert per_machine == {f"machine-w{i}": 500 for i in range(4)}
    assert rows == (2004, 1, 2004)  # 4 writes + 2000 leases, seq contiguous
    for name in ("w0", "w1", "w2", "w3"):  # every machine verifies the whole chain against its own anchor
        rt = open_runtime(shared.settings(name))
        try:
            result = rt.ledger.verify()
            assert result.ok and result.checked == 2004, result.describe()
        finally:
            rt.close()


def test_two_schemas_on_one_server_are_separate_ledgers(shared: Shared) -> None:
    """Two schemas on one server never see each other's chain (tests and tenants can share a server)."""
    a = shared.machine("a")
    other = Shared(shared.server, shared.dbname, f"rl_{secrets.token_hex(4)}", shared.key, shared.tmp / "o")
    b = other.machine("b")
    try:
        a.broker.lease(PATH, identity(run_id="iso"))
        assert b.ledger.find_leases(run_id="iso") == []
        assert a.ledger.ledger_id != b.ledger.ledger_id  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()


def test_an_unreachable_ledger_fails_a_write_before_the_store_changes(shared: Shared, closed_port: int) -> None:
    from runlease.clients.pg import target_from_dsn

    rt = shared.machine("a")
    try:
        before = rt.store.info(PATH).versions
        rt.ledger.close()
        rt.ledger.target = target_from_dsn(shared.server.dsn(shared.dbname).replace(
            f"port={shared.server.port}", f"port={closed_port}"), "PostgreSQL ledger")  # type: ignore[attr-defined]
        with pytest.raises(BackendError, match=f"127.0.0.1:{closed_port}"):
            rt.broker.put(PATH, {**CONN, "password": "Another-Pa55"}, identity())  # runlease: allow secret-assignment (test fixture)
        assert rt.store.info(PATH).versions == before
    finally:
        rt.close()


def test_after_a_key_rotation_both_keys_verify_and_an_old_key_only_worker_cannot(shared: Shared) -> None:
    old = shared.machine("a")
    old.broker.lease(PATH, identity())
    old.close()
    new_key_b64 = new_key()
    rotated = make_runtime(shared.tmp / "b", master_key=f"{new_key_b64},{shared.key}", ledger="postgres",
                           ledger_dsn=shared.dsn, ledger_schema=shared.schema)
    try:
        rotated.broker.put(PATH, CONN, identity())
        rotated.broker.lease(PATH, identity())  # signed with the new active key
        assert rotated.ledger.verify().ok
        assert len(rotated.ledger.audit_key_ids()) == 2  # type: ignore[attr-defined]
    finally:
        rotated.close()
    stale = open_runtime(shared.settings("a"))  # still accepted: its key is one the ledger knows
    try:
        result = stale.ledger.verify()
        assert not result.ok and "which is not loaded" in result.reason
    finally:
        stale.close()


_FORKED: dict[str, Runtime] = {}


def _lease_in_forked_child(queue: "multiprocessing.Queue[object]") -> None:
    rt = _FORKED["rt"]
    try:
        rt.broker.lease(PATH, identity(run_id="fork"))
        backend = rt.ledger._conn().info.backend_pid  # type: ignore[attr-defined]
        queue.put((len(rt.ledger.find_leases(run_id="fork")), backend))
    except Exception as err:  # noqa: BLE001 - report to the parent
        queue.put(repr(err))


def test_a_forked_worker_gets_its_own_connection(shared: Shared) -> None:
    """Executors fork task processes; a child must never talk on its parent's socket."""
    import multiprocessing

    rt = shared.machine("a")
    try:
        rt.broker.lease(PATH, identity(run_id="fork"))  # the parent's connection is open now
        parent_backend = rt.ledger._conn().info.backend_pid  # type: ignore[attr-defined]
        _FORKED["rt"] = rt
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_lease_in_forked_child, args=(queue,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        count, child_backend = queue.get(timeout=10)
        assert count == 2 and child_backend != parent_backend  # its own server session, not the parent's
        rt.broker.lease(PATH, identity(run_id="fork"))  # the parent's connection still works
        assert len(rt.ledger.find_leases(run_id="fork")) == 3 and rt.ledger.verify().ok
    finally:
        _FORKED.clear()
        rt.close()
