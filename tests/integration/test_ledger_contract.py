"""One contract, two ledgers: SQLite (one machine) and PostgreSQL (shared) behave the same.

Leases, queries, closing, extending, audit filters and the hash chain's
tamper detection run unchanged against both; each backend only supplies a
way to write its storage behind runlease's back (the attacker's view).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from runlease.errors import AccessDeniedError, LeaseNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import AuditEvent, LeaseState, Outcome, RunIdentity, SecretPath, utcnow
from runlease.policy.grants import Policy
from runlease.runtime import Runtime
from support.homes import identity, make_runtime, raw_files

PATH = SecretPath.parse("dev/connections/warehouse")
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": "Contract-Pa55-word", "port": 5432}  # runlease: allow secret-assignment (test fixture)


@dataclass
class Backend:
    name: str
    rt: Runtime
    #: Run raw SQL (``%s`` placeholders) on the ledger's storage, bypassing runlease.
    raw: Callable[[str, tuple[Any, ...]], None]
    audit: str  # the audit table's qualified name
    #: Everything the ledger stored, as text (for "never a value" greps).
    dump: Callable[[], str]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        rt = make_runtime(tmp_path / "home")

        def raw(statement: str, params: tuple[Any, ...] = ()) -> None:
            with rt.db.write() as tx:
                tx.conn.execute(statement.replace("%s", "?"), params)

        yield Backend("sqlite", rt, raw, "audit", lambda: raw_files(rt.settings.home).decode("latin-1"))
        rt.close()
        return
    import psycopg

    server = request.getfixturevalue("postgres_server")
    dbname = request.getfixturevalue("pg_database")
    schema = f"rl_{secrets.token_hex(4)}"
    rt = make_runtime(tmp_path / "home", ledger="postgres", ledger_dsn=server.dsn(dbname), ledger_schema=schema)

    def raw_pg(statement: str, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(server.dsn(dbname), autocommit=True) as conn:
            conn.execute(statement, params)  # type: ignore[arg-type]

    def dump_pg() -> str:
        with psycopg.connect(server.dsn(dbname)) as conn:
            return "\n".join(
                str(row[0]) for table in ("meta", "audit_head", "leases", "audit")
                for row in conn.execute(f'SELECT row_to_json(t)::text FROM "{schema}".{table} t')  # type: ignore[arg-type]
            )

    yield Backend("postgres", rt, raw_pg, f'"{schema}".audit', dump_pg)
    rt.close()


def lease_some(rt: Runtime, n: int, run_id: str = "run-1", task_id: str = "load", ttl: int = 600) -> list[str]:
    return [rt.broker.lease(PATH, identity(run_id=run_id, task_id=task_id), ttl=ttl).lease_id for _ in range(n)]


@pytest.fixture
def stocked(backend: Backend) -> Backend:
    backend.rt.broker.put(PATH, CONN, identity())
    return backend


def test_lease_round_trip_and_queries(stocked: Backend) -> None:
    rt = stocked.rt
    who = RunIdentity(orchestrator="kfp", pipeline="train", run_id="r-42", task_id="fit", try_number=2,
                      map_index=3, principal="sa:trainer")
    granted = rt.broker.lease(PATH, who, ttl=120)
    stored = rt.ledger.get_lease(granted.lease_id)
    assert stored.model_dump() == granted.model_dump()  # every field, timestamps to the microsecond
    assert stored.credential is None  # the ledger never holds the value
    lease_some(rt, 2, run_id="r-43", task_id="a")
    lease_some(rt, 1, run_id="r-43", task_id="b")
    assert [lease.lease_id for lease in rt.ledger.find_leases(run_id="r-42")] == [granted.lease_id]
    assert len(rt.ledger.find_leases(run_id="r-43")) == 3
    assert len(rt.ledger.find_leases(run_id="r-43", task_id="a")) == 2
    assert len(rt.ledger.find_leases(limit=2)) == 2
    assert rt.ledger.find_leases(map_index=3, try_number=2)[0].lease_id == granted.lease_id
    with pytest.raises(LeaseNotFoundError):
        rt.ledger.get_lease("rl-does-not-exist")


def test_a_lease_read_before_is_checked_again_once_its_row_changes(stocked: Backend) -> None:
    """get_lease reuses a row it already authenticated only while the row is unchanged (the lease cache's
    per-hit check): an attacker's edit after the first read -- the state flipped, the issuer switched --
    is still refused, and a genuine revoke is seen at once."""
    from runlease.errors import IntegrityError

    rt = stocked.rt
    lease_id = lease_some(rt, 1)[0]
    for _ in range(2):  # read, then read again: the second read is served from the verified rows
        seen = rt.ledger.get_lease(lease_id)
        assert seen.state is LeaseState.ACTIVE
    seen.issuer_state["role"] = "mutated-by-a-caller"  # a caller's copy: never what the next read returns
    assert rt.ledger.get_lease(lease_id).issuer_state == {}
    assert rt.ledger.lease_state(lease_id) is LeaseState.ACTIVE  # known unchanged: not even decoded
    for column, value in (("issuer", "postgres"), ("pipeline", "evil"), ("state", "revoked")):
        stocked.raw(f"UPDATE {stocked.audit.replace('audit', 'leases')} SET {column} = %s WHERE lease_id = %s",
                    (value, lease_id))
        for read in (rt.ledger.get_lease, rt.ledger.lease_state):
            with pytest.raises(IntegrityError):
                read(lease_id)
        stocked.raw(f"UPDATE {stocked.audit.replace('audit', 'leases')} SET {column} = %s WHERE lease_id = %s",
                    ({"issuer": "static", "pipeline": "warehouse_daily", "state": "active"}[column], lease_id))
        assert rt.ledger.get_lease(lease_id).state is LeaseState.ACTIVE  # restored: authentic again
    assert rt.broker.revoke(lease_id) is True
    assert rt.ledger.get_lease(lease_id).state is LeaseState.REVOKED
    assert rt.ledger.lease_state(lease_id) is LeaseState.REVOKED


def test_close_revoke_run_sweep_and_extend(stocked: Backend) -> None:
    rt = stocked.rt
    a, b = lease_some(rt, 2, run_id="r-1")
    short = rt.broker.lease(PATH, identity(run_id="r-2"), ttl=1)
    assert rt.broker.revoke_run("r-1") == 2
    assert rt.broker.revoke_run("r-1") == 0  # idempotent
    assert rt.ledger.get_lease(a).state is LeaseState.REVOKED and rt.ledger.get_lease(a).revoked_at is not None
    assert rt.ledger.find_leases(state=LeaseState.ACTIVE) == [rt.ledger.get_lease(short.lease_id)]
    later = utcnow() + timedelta(seconds=700)
    assert [lease.lease_id for lease in rt.ledger.find_leases(expired_before=later)] == [a, b, short.lease_id]
    event = AuditEvent.for_identity(short.identity, action="renew", lease_id=short.lease_id)
    new_expiry = utcnow() + timedelta(hours=1)
    assert rt.ledger.extend_lease(short.lease_id, new_expiry, event)
    assert rt.ledger.get_lease(short.lease_id).expires_at == new_expiry
    assert not rt.ledger.extend_lease(a, new_expiry, event)  # a revoked lease stays revoked
    assert rt.broker.sweep_expired(now=new_expiry + timedelta(seconds=1)) == 1
    assert rt.ledger.get_lease(short.lease_id).state is LeaseState.EXPIRED
    assert rt.ledger.verify().ok


def test_audit_events_filters_and_order(stocked: Backend) -> None:
    rt = stocked.rt
    lease_some(rt, 3, run_id="r-a")
    lease_some(rt, 2, run_id="r-b")
    rt.broker.revoke_run("r-a")
    rt.broker.policy = Policy.model_validate({"grant": [{"principals": ["nobody"], "environments": ["*"],
                                                         "paths": ["*"], "capabilities": ["read"]}]})
    with pytest.raises(AccessDeniedError):
        rt.broker.lease(PATH, identity(run_id="r-c"))
    events = list(rt.ledger.events(AuditQuery()))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.action for e in events] == ["write"] + ["lease"] * 5 + ["revoke"] * 3 + ["lease"]
    assert events[-1].outcome is Outcome.DENIED and events[-1].run_id == "r-c"
    assert len(list(rt.ledger.events(AuditQuery(run_id="r-a")))) == 6
    assert len(list(rt.ledger.events(AuditQuery(run_id="r-a", action="revoke")))) == 3
    assert [e.seq for e in rt.ledger.events(AuditQuery(after_seq=7))] == [8, 9, 10]
    assert [e.seq for e in rt.ledger.events(AuditQuery(limit=2))] == [1, 2]
    assert all(e.chain and e.key_id == rt.keyring.active_id for e in events)
    assert CONN["password"] not in "".join(e.model_dump_json() for e in events)
    dumped = stocked.dump()
    assert "r-a" in dumped and CONN["password"] not in dumped  # the rows are there, the value is not
    assert rt.ledger.verify().ok and rt.ledger.verify().checked == len(events)


# -- tamper detection: the same attacks, the same verdicts ---------------------------


@pytest.fixture
def chain(stocked: Backend) -> Backend:
    lease_some(stocked.rt, 5)  # events 1 (write) .. 6
    assert stocked.rt.ledger.verify().ok
    return stocked


def test_an_edited_event_is_detected(chain: Backend) -> None:
    chain.raw(f"UPDATE {chain.audit} SET run_id = %s WHERE seq = 3", ("someone-else",))
    result = chain.rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 3 and "edited" in result.reason


def test_a_deleted_event_is_detected(chain: Backend) -> None:
    chain.raw(f"DELETE FROM {chain.audit} WHERE seq = 3", ())
    result = chain.rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 3 and "missing" in result.reason


def test_reordered_events_are_detected(chain: Backend) -> None:
    chain.raw(f"UPDATE {chain.audit} SET seq = -1 WHERE seq = 3", ())
    chain.raw(f"UPDATE {chain.audit} SET seq = 3 WHERE seq = 4", ())
    chain.raw(f"UPDATE {chain.audit} SET seq = 4 WHERE seq = -1", ())
    result = chain.rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 3


def test_a_cut_tail_is_detected(chain: Backend) -> None:
    chain.raw(f"DELETE FROM {chain.audit} WHERE seq > 4", ())
    result = chain.rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 5 and "truncated" in result.reason


def test_an_inserted_forged_event_is_detected(chain: Backend) -> None:
    chain.raw(
        f"INSERT INTO {chain.audit} (seq, ts, action, outcome, detail, key_id, chain) "
        "VALUES (7, %s, 'lease', 'ok', '{}', %s, %s)",
        (utcnow().isoformat(), chain.rt.keyring.active_id, "0" * 64),
    )
    result = chain.rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 7
