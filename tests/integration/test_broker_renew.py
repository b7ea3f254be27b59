"""Broker.renew: only renewable issuers, policy checked again, never past issued_at + max_ttl.

Driven through the vault-database issuer and a real OpenBao database engine,
so the increment the broker asks for is visible where Vault applies it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.errors import AccessDeniedError, BackendError, InvalidValueError, LeaseNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import Outcome, SecretPath
from runlease.policy.grants import Policy
from runlease.runtime import Runtime
from support.openbao import OpenBao
from support.postgres import PostgresServer
from support.homes import identity, make_runtime

PATH = SecretPath.parse("dev/connections/analytics")


@pytest.fixture
def vault_db(openbao: OpenBao, postgres_server: PostgresServer, pg_database: str) -> tuple[OpenBao, str]:
    """The session's OpenBao with a fresh database mount (role ``ro``: 300 s, at most a day)."""
    return openbao, openbao.database_engine(postgres_server, pg_database, {"ro": ("300s", "86400s")})


def stocked(tmp_path: Path, vault_db: tuple[OpenBao, str], **settings: object) -> Runtime:
    bao, mount = vault_db
    rt = make_runtime(tmp_path / "home", **settings)
    rt.broker.put(PATH, {"conn_type": "vault", "host": bao.url, "password": bao.issuer_token(mount)}, identity())
    rt.store.update_metadata(PATH, {"issuer": "vault-database", "role": "ro", "mount": mount})
    return rt


def test_renew_never_passes_issued_at_plus_max_ttl(tmp_path: Path, vault_db: tuple[OpenBao, str]) -> None:
    rt = stocked(tmp_path, vault_db, max_ttl=600)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        renewed = rt.broker.renew(lease.lease_id, 3600)
        assert (renewed.expires_at - lease.issued_at).total_seconds() <= 600
        # Vault was asked for no more than that: its lease ends within 600 s of issue too
        assert (vault_db[0].lease_ttl(lease.issuer_state["vault_lease_id"]) or 0) <= 600
    finally:
        rt.close()


def test_static_leases_cannot_be_renewed_and_unknown_leases_are_named(tmp_path: Path, vault_db: tuple[OpenBao, str]) -> None:
    rt = stocked(tmp_path, vault_db)
    try:
        static = SecretPath.parse("dev/variables/bucket")
        rt.broker.put(static, "s3://models", identity(), kind="variables")
        lease = rt.broker.lease(static, identity(), kind="variables")
        with pytest.raises(InvalidValueError, match="issuer 'static' cannot renew"):
            rt.broker.renew(lease.lease_id, 600)
        with pytest.raises(LeaseNotFoundError, match="rl-nope"):
            rt.broker.renew("rl-nope", 600)
    finally:
        rt.close()


def test_renew_is_denied_and_audited_when_policy_no_longer_grants_lease(tmp_path: Path, vault_db: tuple[OpenBao, str]) -> None:
    rt = stocked(tmp_path, vault_db)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        mark = vault_db[0].audit_mark()
        rt.broker.policy = Policy.model_validate({"grant": [{"principals": ["someone-else"], "environments": ["*"],
                                                             "paths": ["*"], "capabilities": ["lease"]}]})
        with pytest.raises(AccessDeniedError):
            rt.broker.renew(lease.lease_id, 600)
        denied = list(rt.ledger.events(AuditQuery(action="renew")))
        assert [e.outcome for e in denied] == [Outcome.DENIED]
        assert not vault_db[0].requests(mark, path_contains="sys/leases/renew")
    finally:
        rt.close()


def test_a_renew_vault_refuses_is_audited_as_an_error(tmp_path: Path, vault_db: tuple[OpenBao, str]) -> None:
    rt = stocked(tmp_path, vault_db)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        vault_db[0].client().sys.revoke_lease(lease.issuer_state["vault_lease_id"])  # behind runlease's back
        with pytest.raises(BackendError, match="lease not found"):
            rt.broker.renew(lease.lease_id, 600)
        [event] = rt.ledger.events(AuditQuery(action="renew"))
        assert event.outcome is Outcome.ERROR and event.detail == {"error": "BackendError"}
        assert rt.ledger.get_lease(lease.lease_id).expires_at == lease.expires_at
    finally:
        rt.close()
