"""Two ``runlease serve`` processes on one PostgreSQL ledger (the scale-out path), under concurrent clients.

Every lease and revocation of every client, through either replica, must be
in the one audit chain exactly once, and the chain must verify.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, Outcome, RunIdentity
from runlease.runtime import open_runtime
from runlease.settings import Settings

from support.served_home import stock_home
from support.oidc_issuer import TestIssuer, sa_subject
from support.postgres import PostgresServer
from support.runlease_server import start_server, stop_server

CLIENTS_PER_SERVER = 4
LEASES_PER_CLIENT = 15


@pytest.mark.slow
def test_two_servers_one_postgres_ledger_concurrent_clients(postgres_server: PostgresServer, pg_database: str,
                                                            tmp_path: Path) -> None:
    dsn = postgres_server.dsn(pg_database)
    key = base64.b64encode(os.urandom(32)).decode()
    home = tmp_path / "home"
    values = stock_home(home, key, ledger="postgres", ledger_dsn=dsn)
    issuer = TestIssuer.create(tmp_path)
    env = {"RUNLEASE_MASTER_KEY": key, "RUNLEASE_LEDGER": "postgres", "RUNLEASE_LEDGER_DSN": dsn}
    args = ("--oidc-issuer", issuer.issuer, "--oidc-jwks", str(issuer.jwks_file), "--sweep-interval", "0")
    servers = [start_server(home, env, tmp_path / f"server-{i}.log", *args) for i in range(2)]
    try:
        errors: list[BaseException] = []
        leased: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(2 * CLIENTS_PER_SERVER)

        def client(server_index: int, n: int) -> None:
            try:
                token = tmp_path / f"token-{server_index}-{n}"
                token.write_text(issuer.token())
                rt = open_runtime(Settings(home=tmp_path / "none", server=servers[server_index].url,
                                           token_file=token))
                who = RunIdentity(orchestrator="kfp", pipeline="replicas", run_id=f"run-{server_index}-{n}",
                                  task_id="t")
                start.wait(timeout=60)
                for _ in range(LEASES_PER_CLIENT):
                    lease = rt.broker.lease("dev/connections/warehouse", who, 120)
                    assert lease.value["password"] == values["warehouse"]
                    assert rt.broker.revoke(lease.lease_id, "done", who)
                    with lock:
                        leased.append(lease.lease_id)
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=client, args=(s, n)) for s in range(2) for n in range(CLIENTS_PER_SERVER)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        total = 2 * CLIENTS_PER_SERVER * LEASES_PER_CLIENT
        assert len(set(leased)) == total

        rt = open_runtime(Settings(home=home, master_key=key, ledger="postgres", ledger_dsn=dsn))
        try:
            events = list(rt.ledger.events(AuditQuery()))
            result = rt.ledger.verify()
            leases = rt.ledger.find_leases(pipeline="replicas")
        finally:
            rt.close()
        assert result.ok, result.describe()
        lease_events = [e for e in events if e.action == "lease" and e.outcome is Outcome.OK]
        revoke_events = [e for e in events if e.action == "revoke" and e.outcome is Outcome.OK]
        assert len(lease_events) == total and len(revoke_events) == total
        assert {e.lease_id for e in lease_events} == set(leased) == {e.lease_id for e in revoke_events}
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert {e.principal for e in lease_events} == {sa_subject("ml", "pipeline-a")}
        assert len(leases) == total and all(lease.state is LeaseState.REVOKED for lease in leases)
        for server in servers:
            assert values["warehouse"] not in server.log_text() and key not in server.log_text()
    finally:
        for server in servers:
            stop_server(server)
