"""The vault-database issuer against a real OpenBao database engine on the test PostgreSQL.

The tests check effects where they happen: the user Vault created exists in
PostgreSQL and can log in, a revoked Vault lease is gone from Vault, a renewed
one really lives longer there, and the audit log shows each request's
correlation id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from runlease.audit import correlation
from runlease.errors import BackendError, ConfigError, InvalidValueError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, SecretPath, utcnow
from runlease.runtime import Runtime
from support.homes import identity, make_runtime, raw_files
from support.openbao import OpenBao
from support.postgres import PostgresServer

PATH = SecretPath.parse("prod/connections/analytics")


@dataclass
class Setup:
    rt: Runtime
    bao: OpenBao
    pg: PostgresServer
    dbname: str
    mount: str
    token: str

    @property
    def target(self) -> dict[str, object]:
        return {"conn_type": "postgres", "host": self.pg.host, "port": self.pg.port, "schema": self.dbname,
                "extra": {"sslmode": "disable"}}

    def roles(self) -> set[str]:
        import psycopg

        with psycopg.connect(self.pg.dsn(self.dbname)) as conn:
            return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")}


def vault_connection(url: str, token: str) -> dict[str, object]:
    return {"conn_type": "vault", "host": url, "password": token, "extra": {}}


def stock(rt: Runtime, url: str, token: str, mount: str, role: str = "analytics-ro", **meta: object) -> None:
    rt.broker.put(PATH, vault_connection(url, token), identity())
    rt.store.update_metadata(PATH, {"issuer": "vault-database", "role": role, "mount": mount, **meta})


@pytest.fixture
def vault(openbao: OpenBao, postgres_server: PostgresServer, pg_database: str, tmp_path: Path) -> Iterator[Setup]:
    mount = openbao.database_engine(postgres_server, pg_database, {"analytics-ro": ("600s", "3600s"),
                                                                   "short": ("60s", "120s")})
    token = openbao.issuer_token(mount)
    rt = make_runtime(tmp_path / "home")
    setup = Setup(rt, openbao, postgres_server, pg_database, mount, token)
    stock(rt, openbao.url, token, mount, target=setup.target)
    try:
        yield setup
    finally:
        rt.close()


def test_lease_is_a_working_database_login_with_vaults_lease_id_and_ttl(vault: Setup) -> None:
    import psycopg

    mark = vault.bao.audit_mark()
    lease = vault.rt.broker.lease(PATH, identity(), ttl=3600)
    vault_lease = lease.issuer_state["vault_lease_id"]
    assert vault_lease.startswith(f"{vault.mount}/creds/analytics-ro/")
    assert lease.value["login"] in vault.roles()
    with psycopg.connect(vault.pg.dsn(vault.dbname, user=lease.value["login"], password=lease.value["password"])) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == lease.value["login"]
    assert {k: lease.value[k] for k in ("host", "port", "schema")} == {
        "host": vault.pg.host, "port": vault.pg.port, "schema": vault.dbname}
    # Vault granted 600 s although 3600 s were asked: the lease ends when Vault's does.
    assert abs((lease.expires_at - utcnow()).total_seconds() - 600) < 30
    assert 500 < (vault.bao.lease_ttl(vault_lease) or 0) <= 600
    [request] = vault.bao.requests(mark, path_contains="/creds/")
    assert request["path"] == f"{vault.mount}/creds/analytics-ro"


def test_every_issuer_request_carries_the_runs_correlation_id(vault: Setup) -> None:
    """Bug 7: issue, renew and revoke requests went out without X-Correlation-ID."""
    who = identity(run_id="run-corr")
    mark = vault.bao.audit_mark()
    lease = vault.rt.broker.lease(PATH, who, ttl=300)
    vault.rt.broker.renew(lease.lease_id, 600)
    vault.rt.broker.revoke(lease.lease_id)
    sent = [r for r in vault.bao.requests(mark) if r["path"].startswith((f"{vault.mount}/", "sys/leases/"))]
    assert [r["path"] for r in sent] == [f"{vault.mount}/creds/analytics-ro", "sys/leases/renew", "sys/leases/revoke"]
    assert {vault.bao.correlation(r) for r in sent} == {correlation.correlation_id(who)}


def test_revoke_revokes_that_vault_lease_and_is_idempotent(vault: Setup) -> None:
    lease = vault.rt.broker.lease(PATH, identity(run_id="run-7"), ttl=300)
    other = vault.rt.broker.lease(PATH, identity(run_id="run-8"), ttl=300)
    assert vault.rt.broker.revoke_run("run-7") == 1
    assert vault.bao.lease_ttl(lease.issuer_state["vault_lease_id"]) is None
    assert lease.value["login"] not in vault.roles()  # Vault dropped the user
    assert vault.bao.lease_ttl(other.issuer_state["vault_lease_id"]) is not None
    # Vault answers 204 for a lease it no longer holds; revoking again through the issuer is harmless.
    vault.rt.broker.issuers.get("vault-database").revoke(vault.rt.ledger.get_lease(lease.lease_id))
    assert vault.rt.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED


def test_renew_extends_the_vault_lease_and_the_ledger(vault: Setup) -> None:
    lease = vault.rt.broker.lease(PATH, identity(), ttl=300)
    vault_lease = lease.issuer_state["vault_lease_id"]
    renewed = vault.rt.broker.renew(lease.lease_id, 1800)
    assert (vault.bao.lease_ttl(vault_lease) or 0) > 1000  # Vault really extended it
    assert renewed.expires_at > lease.expires_at
    assert vault.rt.ledger.get_lease(lease.lease_id).expires_at == renewed.expires_at
    assert [e.action for e in vault.rt.ledger.events(AuditQuery(action="renew"))] == ["renew"]


def test_renew_is_capped_by_what_vault_grants(vault: Setup) -> None:
    vault.rt.store.update_metadata(PATH, {"role": "short"})
    lease = vault.rt.broker.lease(PATH, identity(), ttl=60)
    renewed = vault.rt.broker.renew(lease.lease_id, 3600)
    assert (renewed.expires_at - lease.issued_at).total_seconds() <= 121  # Vault's max_ttl, not 3600


def test_a_revoked_lease_cannot_be_renewed(vault: Setup) -> None:
    lease = vault.rt.broker.lease(PATH, identity(), ttl=300)
    vault.rt.broker.revoke(lease.lease_id)
    with pytest.raises(InvalidValueError, match="is revoked"):
        vault.rt.broker.renew(lease.lease_id, 600)
    # And Vault itself refuses a renew of a revoked lease (the broker never gets that far above).
    with pytest.raises(BackendError, match="refused PUT sys/leases/renew: InvalidRequest: .*lease not found"):
        vault.rt.broker.issuers.get("vault-database").renew(
            lease.model_copy(update={"state": LeaseState.ACTIVE}), timedelta(seconds=600))


def test_a_lease_outlived_by_its_issuing_token_is_closed_not_stranded(vault: Setup) -> None:
    """Bug 6: the issuing token expired first; revoke exited 9, sweep raised, the lease stayed active forever.

    Real time: the issuing token lives 3 s; Vault revokes its leases (and drops the user) when it expires.
    """
    short = vault.bao.issuer_token(vault.mount, ttl="3s", renewable=False)
    stock(vault.rt, vault.bao.url, short, vault.mount, target=vault.target)
    first = vault.rt.broker.lease(PATH, identity(run_id="run-a"), ttl=300)
    second = vault.rt.broker.lease(PATH, identity(run_id="run-b"), ttl=300)
    deadline = time.monotonic() + 20
    while vault.bao.lease_ttl(first.issuer_state["vault_lease_id"]) is not None and time.monotonic() < deadline:
        time.sleep(0.25)
    assert vault.bao.lease_ttl(first.issuer_state["vault_lease_id"]) is None  # gone with its token
    assert vault.rt.broker.revoke(first.lease_id)
    assert vault.rt.ledger.get_lease(first.lease_id).state is LeaseState.REVOKED
    # the sweep closes the other one without raising once its TTL is over
    assert vault.rt.broker.sweep_expired(now=utcnow() + timedelta(seconds=400)) == 1
    assert vault.rt.ledger.get_lease(second.lease_id).state is not LeaseState.ACTIVE


def test_a_rotated_issuer_token_revokes_leases_of_the_old_one(vault: Setup) -> None:
    lease = vault.rt.broker.lease(PATH, identity(), ttl=300)
    stock(vault.rt, vault.bao.url, vault.bao.issuer_token(vault.mount), vault.mount, target=vault.target)
    vault.rt.broker.revoke(lease.lease_id)
    assert vault.bao.lease_ttl(lease.issuer_state["vault_lease_id"]) is None


def test_wrong_token_is_a_clear_error_without_the_token(vault: Setup) -> None:
    wrong = "hvs.wrong-token-that-must-not-leak"
    vault.rt.broker.put(PATH, vault_connection(vault.bao.url, wrong), identity())
    with pytest.raises(BackendError) as info:
        vault.rt.broker.lease(PATH, identity())
    assert f"Vault at {vault.bao.url} refused GET {vault.mount}/creds/analytics-ro: Forbidden" in str(info.value)
    assert wrong not in str(info.value) and vault.token not in str(info.value)
    assert vault.rt.ledger.find_leases() == []


def test_unknown_role_names_role_and_address(vault: Setup) -> None:
    vault.rt.store.update_metadata(PATH, {"role": "nope"})
    with pytest.raises(BackendError, match=f"Vault at {vault.bao.url} refused GET {vault.mount}/creds/nope"):
        vault.rt.broker.lease(PATH, identity())


def test_missing_role_or_token_is_a_config_error(vault: Setup) -> None:
    vault.rt.store.update_metadata(PATH, {"role": None})
    with pytest.raises(ConfigError, match="prod/connections/analytics.*role"):
        vault.rt.broker.lease(PATH, identity())
    vault.rt.store.update_metadata(PATH, {"role": "analytics-ro"})
    vault.rt.broker.put(PATH, {"conn_type": "vault", "host": vault.bao.url}, identity())
    with pytest.raises(ConfigError, match="has no token"):
        vault.rt.broker.lease(PATH, identity())


def test_secrets_never_reach_ledger_audit_or_debug_logs(vault: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lease = vault.rt.broker.lease(PATH, identity(), ttl=300)
    vault.rt.broker.renew(lease.lease_id, 600)
    vault.rt.broker.revoke(lease.lease_id)
    password = lease.value["password"]
    assert f"/v1/{vault.mount}/creds/analytics-ro" in caplog.text  # urllib3 was logging at DEBUG
    stored = json.dumps(vault.rt.ledger.get_lease(lease.lease_id).model_dump(mode="json"))
    events = "".join(e.model_dump_json() for e in vault.rt.ledger.events(AuditQuery()))
    for value in (password, vault.token):
        assert value not in stored and value not in events and value not in caplog.text
        assert value.encode() not in raw_files(vault.rt.settings.home)
        assert value not in vault.bao.audit_log.read_text()  # Vault's audit log HMACs them


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_unreachable_vault_is_a_bounded_clear_error(
    vault: Setup, failure: str, closed_port: int, silent_server: int
) -> None:
    url = f"http://127.0.0.1:{closed_port if failure == 'refused' else silent_server}"
    vault.rt.broker.put(PATH, vault_connection(url, vault.token), identity())
    vault.rt.store.update_metadata(PATH, {"timeout": 1})
    with pytest.raises(BackendError) as info:
        vault.rt.broker.lease(PATH, identity())
    expected = "did not answer GET" if failure == "silent" else "cannot reach Vault"
    assert url in str(info.value) and expected in str(info.value)
    assert vault.token not in str(info.value)
    assert vault.rt.ledger.find_leases() == []


def test_a_forged_ledger_row_cannot_redirect_revoke(vault: Setup) -> None:
    """The mount and role come from the authenticated secret, never from the ledger row."""
    issuer = vault.rt.broker.issuers.get("vault-database")
    lease = vault.rt.broker.lease(PATH, identity(), ttl=300)
    other_mount = vault.bao.database_engine(vault.pg, vault.dbname, {"admin": ("600s", "3600s")})
    victim = vault.bao.client().read(f"{other_mount}/creds/admin")["lease_id"]
    forgeries = [
        {"vault_lease_id": "auth/token/create/abc"},
        {"vault_lease_id": victim, "mount": other_mount, "role": "admin"},  # the row names the other mount
        {"vault_lease_id": f"{vault.mount}/creds/short/xyz", "role": "short"},  # another role of the same mount
        {"vault_lease_id": f"{vault.mount}/creds/analytics-ro/../../{other_mount}/creds/admin/x"},
    ]
    for forged_state in forgeries:
        forged = vault.rt.ledger.get_lease(lease.lease_id).model_copy(
            update={"issuer_state": {**lease.issuer_state, **forged_state}})
        with pytest.raises(ConfigError, match=f"not under {vault.mount}/creds/analytics-ro/"):
            issuer.revoke(forged)
        with pytest.raises(ConfigError, match="not under"):
            issuer.renew(forged, timedelta(seconds=60))
    assert vault.bao.lease_ttl(victim) is not None  # untouched
