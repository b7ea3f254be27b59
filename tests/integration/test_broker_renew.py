"""Broker.renew: only renewable issuers, policy checked again, never past issued_at + max_ttl.

Driven through the vault-database issuer and the fake Vault (real HTTP), so
the increment the broker asks for is visible where Vault receives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.errors import AccessDeniedError, BackendError, InvalidValueError, LeaseNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import Outcome, SecretPath
from runlease.policy import Policy
from runlease.runtime import Runtime
from support.fake_vault import FakeVault
from support.homes import identity, make_runtime

PATH = SecretPath.parse("dev/connections/analytics")


def stocked(tmp_path: Path, fake_vault: FakeVault, **settings: object) -> Runtime:
    fake_vault.add_role("database", "ro", default_ttl=300, max_ttl=86400)
    rt = make_runtime(tmp_path / "home", **settings)
    rt.broker.put(PATH, {"conn_type": "vault", "host": fake_vault.url, "password": fake_vault.token}, identity())
    rt.store.update_metadata(PATH, {"issuer": "vault-database", "role": "ro"})
    return rt


def test_renew_never_passes_issued_at_plus_max_ttl(tmp_path: Path, fake_vault: FakeVault) -> None:
    rt = stocked(tmp_path, fake_vault, max_ttl=600)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        renewed = rt.broker.renew(lease.lease_id, 3600)
        assert (renewed.expires_at - lease.issued_at).total_seconds() <= 600
        vault_lease = fake_vault.leases[lease.issuer_state["vault_lease_id"]]
        assert vault_lease.expires - vault_lease.issued <= 601  # Vault was asked for no more than that
    finally:
        rt.close()


def test_static_leases_cannot_be_renewed_and_unknown_leases_are_named(tmp_path: Path, fake_vault: FakeVault) -> None:
    rt = stocked(tmp_path, fake_vault)
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


def test_renew_is_denied_and_audited_when_policy_no_longer_grants_lease(tmp_path: Path, fake_vault: FakeVault) -> None:
    rt = stocked(tmp_path, fake_vault)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        rt.broker.policy = Policy.model_validate({"grant": [{"principals": ["someone-else"], "environments": ["*"],
                                                             "paths": ["*"], "capabilities": ["lease"]}]})
        with pytest.raises(AccessDeniedError):
            rt.broker.renew(lease.lease_id, 600)
        denied = list(rt.ledger.events(AuditQuery(action="renew")))
        assert [e.outcome for e in denied] == [Outcome.DENIED]
        assert not [r for r in fake_vault.requests if r["path"] == "/v1/sys/leases/renew"]
    finally:
        rt.close()


def test_a_renew_vault_refuses_is_audited_as_an_error(tmp_path: Path, fake_vault: FakeVault) -> None:
    rt = stocked(tmp_path, fake_vault)
    try:
        lease = rt.broker.lease(PATH, identity(), ttl=300)
        fake_vault.leases[lease.issuer_state["vault_lease_id"]].revoked = True  # revoked behind runlease's back
        with pytest.raises(BackendError, match="lease not found"):
            rt.broker.renew(lease.lease_id, 600)
        [event] = rt.ledger.events(AuditQuery(action="renew"))
        assert event.outcome is Outcome.ERROR and event.detail == {"error": "BackendError"}
        assert rt.ledger.get_lease(lease.lease_id).expires_at == lease.expires_at
    finally:
        rt.close()
