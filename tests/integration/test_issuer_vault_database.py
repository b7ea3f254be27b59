"""The vault-database issuer over HTTP against a fake Vault that speaks the documented wire format.

The fake (tests/support/fake_vault.py) keeps Vault's lease state, so the
tests check effects, not calls: the lease Vault issued is the one revoked,
a renewed lease really lives longer in Vault, a revoked one cannot renew.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from runlease.errors import BackendError, ConfigError, InvalidValueError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, SecretPath, utcnow
from runlease.runtime import Runtime
from support.fake_vault import FakeVault
from support.homes import identity, make_runtime, raw_files

PATH = SecretPath.parse("prod/connections/analytics")
TARGET = {"conn_type": "postgres", "host": "db.internal", "port": 5432, "schema": "analytics",
          "extra": {"sslmode": "require"}}


def vault_connection(url: str, token: str) -> dict[str, object]:
    return {"conn_type": "vault", "host": url, "password": token, "extra": {}}


@pytest.fixture
def vault(fake_vault: FakeVault, tmp_path: Path) -> Iterator[tuple[Runtime, FakeVault]]:
    fake_vault.add_role("database", "analytics-ro", default_ttl=600, max_ttl=3600)
    rt = make_runtime(tmp_path / "home")
    rt.broker.put(PATH, vault_connection(fake_vault.url, fake_vault.token), identity())
    rt.store.update_metadata(PATH, {"issuer": "vault-database", "role": "analytics-ro", "target": TARGET})
    try:
        yield rt, fake_vault
    finally:
        rt.close()


def test_lease_carries_vaults_credential_lease_id_and_ttl(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    lease = rt.broker.lease(PATH, identity(), ttl=3600)
    [issued] = fake.leases.values()
    assert lease.value == {**TARGET, "login": issued.username, "password": issued.password}
    assert lease.issuer_state["vault_lease_id"] == issued.lease_id
    assert issued.lease_id.startswith("database/creds/analytics-ro/")
    # Vault granted 600 s although 3600 s were asked: the lease ends when Vault's does.
    assert abs((lease.expires_at - utcnow()).total_seconds() - 600) < 30
    assert [r["method"] + " " + r["path"] for r in fake.requests] == ["GET /v1/database/creds/analytics-ro"]
    assert all(r["has_token"] for r in fake.requests)


def test_revoke_revokes_that_vault_lease_and_is_idempotent(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    lease = rt.broker.lease(PATH, identity(run_id="run-7"), ttl=300)
    other = rt.broker.lease(PATH, identity(run_id="run-8"), ttl=300)
    assert rt.broker.revoke_run("run-7") == 1
    assert fake.leases[lease.issuer_state["vault_lease_id"]].revoked
    assert not fake.leases[other.issuer_state["vault_lease_id"]].revoked
    # Vault answers 204 for a lease it no longer holds; revoking again through the issuer is harmless.
    rt.broker.issuers.get("vault-database").revoke(rt.ledger.get_lease(lease.lease_id))
    assert rt.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED


def test_renew_extends_the_vault_lease_and_the_ledger(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    lease = rt.broker.lease(PATH, identity(), ttl=300)
    vault_lease = fake.leases[lease.issuer_state["vault_lease_id"]]
    before = vault_lease.expires
    renewed = rt.broker.renew(lease.lease_id, 1800)
    assert vault_lease.expires > before + 1000  # Vault really extended it
    assert renewed.expires_at > lease.expires_at
    assert rt.ledger.get_lease(lease.lease_id).expires_at == renewed.expires_at
    renew_calls = [r for r in fake.requests if r["path"] == "/v1/sys/leases/renew"]
    assert len(renew_calls) == 1
    assert [e.action for e in rt.ledger.events(AuditQuery(action="renew"))] == ["renew"]


def test_renew_is_capped_by_what_vault_grants(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    fake.add_role("database", "short", default_ttl=60, max_ttl=120)
    rt.store.update_metadata(PATH, {"role": "short"})
    lease = rt.broker.lease(PATH, identity(), ttl=60)
    renewed = rt.broker.renew(lease.lease_id, 3600)
    assert (renewed.expires_at - lease.issued_at).total_seconds() <= 121  # Vault's max_ttl, not 3600


def test_a_revoked_lease_cannot_be_renewed(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    lease = rt.broker.lease(PATH, identity(), ttl=300)
    rt.broker.revoke(lease.lease_id)
    with pytest.raises(InvalidValueError, match="is revoked"):
        rt.broker.renew(lease.lease_id, 600)
    # And Vault itself refuses a renew of a revoked lease (the broker never gets that far above).
    with pytest.raises(BackendError, match="refused PUT sys/leases/renew: InvalidRequest: lease not found"):
        rt.broker.issuers.get("vault-database").renew(lease.model_copy(update={"state": LeaseState.ACTIVE}), timedelta(seconds=600))


def test_wrong_token_is_a_clear_error_without_the_token(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    wrong = "hvs.wrong-token-that-must-not-leak"
    rt.broker.put(PATH, vault_connection(fake.url, wrong), identity())
    with pytest.raises(BackendError) as info:
        rt.broker.lease(PATH, identity())
    assert f"Vault at {fake.url} refused GET database/creds/analytics-ro: Forbidden: permission denied" == str(info.value)
    assert wrong not in str(info.value) and fake.token not in str(info.value)
    assert rt.ledger.find_leases() == []


def test_unknown_role_names_role_and_address(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    rt.store.update_metadata(PATH, {"role": "nope"})
    with pytest.raises(BackendError, match=f"Vault at {fake.url} refused GET database/creds/nope: .*unknown role"):
        rt.broker.lease(PATH, identity())


def test_missing_role_or_token_is_a_config_error(vault: tuple[Runtime, FakeVault]) -> None:
    rt, fake = vault
    rt.store.update_metadata(PATH, {"role": None})
    with pytest.raises(ConfigError, match="prod/connections/analytics.*role"):
        rt.broker.lease(PATH, identity())
    rt.store.update_metadata(PATH, {"role": "analytics-ro"})
    rt.broker.put(PATH, {"conn_type": "vault", "host": fake.url}, identity())
    with pytest.raises(ConfigError, match="has no token"):
        rt.broker.lease(PATH, identity())


def test_secrets_never_reach_ledger_audit_or_debug_logs(
    vault: tuple[Runtime, FakeVault], caplog: pytest.LogCaptureFixture
) -> None:
    rt, fake = vault
    caplog.set_level(logging.DEBUG)
    lease = rt.broker.lease(PATH, identity(), ttl=300)
    rt.broker.renew(lease.lease_id, 600)
    rt.broker.revoke(lease.lease_id)
    password = lease.value["password"]
    assert "/v1/database/creds/analytics-ro" in caplog.text  # urllib3 was logging at DEBUG
    stored = json.dumps(rt.ledger.get_lease(lease.lease_id).model_dump(mode="json"))
    events = "".join(e.model_dump_json() for e in rt.ledger.events(AuditQuery()))
    for value in (password, fake.token):
        assert value not in stored and value not in events and value not in caplog.text
        assert value.encode() not in raw_files(rt.settings.home)


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_unreachable_vault_is_a_bounded_clear_error(
    vault: tuple[Runtime, FakeVault], failure: str, closed_port: int, silent_server: int
) -> None:
    rt, fake = vault
    url = f"http://127.0.0.1:{closed_port if failure == 'refused' else silent_server}"
    rt.broker.put(PATH, vault_connection(url, fake.token), identity())
    rt.store.update_metadata(PATH, {"timeout": 1})
    with pytest.raises(BackendError) as info:
        rt.broker.lease(PATH, identity())
    expected = "did not answer GET database/creds/analytics-ro in time" if failure == "silent" else "cannot reach Vault"
    assert url in str(info.value) and expected in str(info.value)
    assert fake.token not in str(info.value)
    assert rt.ledger.find_leases() == []


def test_a_tampered_ledger_cannot_redirect_revoke_to_another_vault_lease(vault: tuple[Runtime, FakeVault]) -> None:
    rt, _ = vault
    lease = rt.broker.lease(PATH, identity(), ttl=300)
    forged = rt.ledger.get_lease(lease.lease_id).model_copy(
        update={"issuer_state": {**lease.issuer_state, "vault_lease_id": "auth/token/create/abc"}})
    with pytest.raises(ConfigError, match="not under database/creds/"):
        rt.broker.issuers.get("vault-database").revoke(forged)
