from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from support.core import conn

from runlease.errors import (
    ConfigError, InvalidValueError, LeaseNotFoundError, RevocationIncompleteError, SecretNotFoundError,
)
from runlease.issuers.base import IssuedCredential
from runlease.ledger.base import AuditQuery
from runlease.models import Lease, LeaseState, RunIdentity, SecretPath, Stage
from runlease.runtime import Runtime, init_home
from runlease.settings import Settings
from runlease.store.base import StoredSecret

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
P = SecretPath.parse("dev/connections/warehouse")


def unique(prefix: str) -> str:
    """Values unique per test: the broker's redactor is process-wide."""
    return f"{prefix}-{secrets.token_hex(8)}"


def ident(run: str = "run-1", task: str = "train", try_number: int = 1, pipeline: str = "training_daily",
          map_index: int | None = None) -> RunIdentity:
    return RunIdentity(orchestrator="airflow", pipeline=pipeline, run_id=run, task_id=task,
                       try_number=try_number, map_index=map_index)


@pytest.fixture
def rt(runtime: Runtime, admin: RunIdentity) -> Runtime:
    runtime.broker.put(P, conn(unique("pw")), admin)
    runtime.broker.clock = lambda: T0
    return runtime


def events(rt: Runtime, action: str | None = None) -> list:
    return list(rt.ledger.events(AuditQuery(action=action)))


# --- lease -----------------------------------------------------------------------


def test_lease_binds_value_to_the_run_and_records_it(rt: Runtime, identity: RunIdentity) -> None:
    lease = rt.broker.lease("warehouse", identity, ttl=120)  # bare id -> default env dev
    assert lease.path == P and lease.version == 1 and lease.stage is Stage.CURRENT
    assert lease.identity == identity and lease.issuer == "static"
    assert lease.issued_at == T0 and lease.expires_at == T0 + timedelta(seconds=120)
    assert lease.state is LeaseState.ACTIVE
    assert lease.value == rt.store.get(P).value
    stored = rt.ledger.get_lease(lease.lease_id)
    assert stored.model_dump() == lease.model_dump()
    with pytest.raises(LookupError):
        stored.value  # noqa: B018 - a lease from the ledger carries no credential
    [event] = events(rt, "lease")
    assert (event.path, event.version, event.lease_id, event.run_id, event.task_id, event.try_number) == (
        str(P), 1, lease.lease_id, identity.run_id, identity.task_id, identity.try_number)
    assert event.principal == identity.principal and event.detail["ttl_s"] == 120


def test_lease_ids_are_unique(rt: Runtime, identity: RunIdentity) -> None:
    ids = {rt.broker.lease(P, identity).lease_id for _ in range(50)}
    assert len(ids) == 50


def test_default_ttl_and_clamp_to_max(settings: Settings, identity: RunIdentity, admin: RunIdentity) -> None:
    rt, _ = init_home(settings.model_copy(update={"default_ttl": 300, "max_ttl": 900}))
    try:
        rt.broker.clock = lambda: T0
        rt.broker.put(P, conn(), admin)
        assert rt.broker.lease(P, identity).expires_at == T0 + timedelta(seconds=300)
        assert rt.broker.lease(P, identity, ttl=600).expires_at == T0 + timedelta(seconds=600)
        for huge in (901, 10**9, timedelta(days=365)):
            lease = rt.broker.lease(P, identity, ttl=huge)
            assert lease.expires_at == T0 + timedelta(seconds=900)
        assert events(rt, "lease")[-1].detail["ttl_s"] == 900
    finally:
        rt.close()


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("-inf"), timedelta(0), timedelta(seconds=-30)])
def test_non_positive_ttl_is_rejected_and_nothing_recorded(rt: Runtime, identity: RunIdentity, bad: Any) -> None:
    before = len(events(rt))
    with pytest.raises(InvalidValueError, match="TTL must be positive"):
        rt.broker.lease(P, identity, ttl=bad)
    assert len(events(rt)) == before
    assert rt.ledger.find_leases() == []


@pytest.mark.parametrize("bad", [float("nan"), "abc", object()])
def test_non_numeric_ttl_is_a_clear_error(rt: Runtime, identity: RunIdentity, bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="TTL must be a number of seconds"):
        rt.broker.lease(P, identity, ttl=bad)
    assert rt.ledger.find_leases() == []


@pytest.mark.parametrize("huge", [float("inf"), 1e30, 10**30])
def test_ttl_too_large_for_timedelta_is_clamped(rt: Runtime, identity: RunIdentity, huge: Any) -> None:
    lease = rt.broker.lease(P, identity, ttl=huge)
    assert lease.expires_at == T0 + rt.broker.max_ttl


def test_lease_of_missing_secret_fails_and_records_no_lease(rt: Runtime, identity: RunIdentity) -> None:
    with pytest.raises(SecretNotFoundError, match="dev/connections/nope"):
        rt.broker.lease("nope", identity)
    assert rt.ledger.find_leases() == []


def test_lease_by_stage(rt: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    pending = unique("pw-pending")
    rt.broker.put(P, conn(pending), admin, stage=Stage.PENDING)
    lease = rt.broker.lease(P, identity, stage=Stage.PENDING)
    assert lease.version == 2 and lease.stage is Stage.PENDING and lease.value["password"] == pending
    assert rt.broker.lease(P, identity).version == 1


# --- redaction -----------------------------------------------------------------------


def test_leased_connection_password_and_sensitive_extras_are_masked(runtime: Runtime, identity: RunIdentity,
                                                                    admin: RunIdentity) -> None:
    pw, token, nested = unique("pw"), unique("tok"), unique("nested")
    login, host, region = unique("login"), unique("host"), unique("region")
    runtime.broker.put(P, conn(pw, login=login, host=host, extra={
        "api_token": token, "region": region, "oauth": {"client_secret": nested}}), admin)
    redactor = runtime.broker.redactor
    assert pw not in redactor and token not in redactor  # nothing registered before a lease
    runtime.broker.lease(P, identity)
    for value in (pw, token, nested):
        assert value in redactor
    for value in (login, host, region):
        assert value not in redactor
    line = redactor.redact(f"connect {login}:{pw}@{host} token={token}")
    assert pw not in line and token not in line and login in line


@pytest.mark.parametrize("kind", ["variables", "tokens", "config"])
def test_leased_strings_are_masked_whole(runtime: Runtime, identity: RunIdentity, admin: RunIdentity,
                                         kind: str) -> None:
    value = unique(f"{kind}-value")
    runtime.broker.put(f"dev/{kind}/thing", value, admin)
    lease = runtime.broker.lease("thing", identity, kind=kind)
    assert lease.path == SecretPath.parse(f"dev/{kind}/thing")
    assert lease.value == value
    assert value in runtime.broker.redactor
    assert runtime.broker.redactor.redact(f"value is {value}.") == "value is ***."


def test_lease_never_shows_its_value(rt: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    token = unique("tok")
    rt.broker.put("dev/tokens/api", token, admin)
    pw = rt.store.get(P).value["password"]
    for lease, value in ((rt.broker.lease(P, identity), pw), (rt.broker.lease("dev/tokens/api", identity), token)):
        shown = [repr(lease), str(lease), json.dumps(lease.model_dump(mode="json")), lease.model_dump_json(),
                 repr(lease.model_dump()), f"{lease!r}"]
        for text in shown:
            assert value not in text
        assert "credential" not in lease.model_dump()
        assert lease.value  # but the caller can still get it


# --- revoke ------------------------------------------------------------------------------


def test_revoke_is_idempotent(rt: Runtime, identity: RunIdentity) -> None:
    lease = rt.broker.lease(P, identity)
    assert rt.broker.revoke(lease.lease_id, reason="task done") is True
    stored = rt.ledger.get_lease(lease.lease_id)
    assert stored.state is LeaseState.REVOKED and stored.revoke_reason == "task done" and stored.revoked_at == T0
    n = len(events(rt))
    assert rt.broker.revoke(lease.lease_id) is False
    assert rt.broker.revoke(lease.lease_id) is False
    assert len(events(rt)) == n
    [event] = events(rt, "revoke")
    assert event.lease_id == lease.lease_id and event.detail["reason"] == "task done"
    assert rt.ledger.verify().ok


def test_revoke_unknown_lease(rt: Runtime) -> None:
    with pytest.raises(LeaseNotFoundError, match="rlnope"):
        rt.broker.revoke("rlnope")


def test_revoke_run_only_touches_that_run(rt: Runtime) -> None:
    a = [rt.broker.lease(P, ident("run-a", task)) for task in ("extract", "train", "train")]
    b = [rt.broker.lease(P, ident("run-b", "train"))]
    assert rt.broker.revoke_run("run-a") == 3
    assert {rt.ledger.get_lease(x.lease_id).state for x in a} == {LeaseState.REVOKED}
    assert rt.ledger.get_lease(b[0].lease_id).state is LeaseState.ACTIVE
    assert rt.broker.revoke_run("run-a") == 0
    assert rt.broker.revoke_run("run-none") == 0
    assert len(events(rt, "revoke")) == 3


def test_revoke_task_matches_task_try_and_map_index(rt: Runtime) -> None:
    t1 = rt.broker.lease(P, ident("run-a", "train", 1))
    t2 = rt.broker.lease(P, ident("run-a", "train", 2))
    other_task = rt.broker.lease(P, ident("run-a", "extract", 1))
    other_run = rt.broker.lease(P, ident("run-b", "train", 1))
    m0 = rt.broker.lease(P, ident("run-a", "mapped", 1, map_index=0))
    m1 = rt.broker.lease(P, ident("run-a", "mapped", 1, map_index=1))
    assert rt.broker.revoke_task("run-a", "train", try_number=1) == 1
    assert rt.ledger.get_lease(t1.lease_id).state is LeaseState.REVOKED
    assert rt.ledger.get_lease(t2.lease_id).state is LeaseState.ACTIVE
    assert rt.broker.revoke_task("run-a", "mapped", try_number=1, map_index=1) == 1
    assert rt.ledger.get_lease(m0.lease_id).state is LeaseState.ACTIVE
    assert rt.ledger.get_lease(m1.lease_id).state is LeaseState.REVOKED
    assert rt.broker.revoke_task("run-a", "train") == 1  # any try
    assert rt.ledger.get_lease(t2.lease_id).state is LeaseState.REVOKED
    assert rt.ledger.get_lease(other_task.lease_id).state is LeaseState.ACTIVE
    assert rt.ledger.get_lease(other_run.lease_id).state is LeaseState.ACTIVE


def test_sweep_expired_closes_only_leases_past_expiry(rt: Runtime, identity: RunIdentity) -> None:
    short = rt.broker.lease(P, identity, ttl=60)
    long = rt.broker.lease(P, identity, ttl=3600)
    revoked = rt.broker.lease(P, identity, ttl=60)
    rt.broker.revoke(revoked.lease_id)
    assert rt.broker.sweep_expired(now=T0 + timedelta(seconds=59)) == 0
    assert rt.broker.sweep_expired(now=T0 + timedelta(seconds=60)) == 1  # expiry instant is expired
    assert rt.ledger.get_lease(short.lease_id).state is LeaseState.EXPIRED
    assert rt.ledger.get_lease(long.lease_id).state is LeaseState.ACTIVE
    assert rt.ledger.get_lease(revoked.lease_id).state is LeaseState.REVOKED
    assert rt.broker.sweep_expired(now=T0 + timedelta(seconds=61)) == 0
    [event] = events(rt, "expire")
    assert event.lease_id == short.lease_id and event.detail["reason"] == "ttl expired"
    # The broker's clock is the default "now".
    rt.broker.clock = lambda: T0 + timedelta(hours=2)
    assert rt.broker.sweep_expired() == 1
    assert rt.ledger.get_lease(long.lease_id).state is LeaseState.EXPIRED
    assert rt.broker.revoke(long.lease_id) is False  # an expired lease is not revoked again
    assert rt.ledger.verify().ok


def test_sweep_compares_instants_not_strings(rt: Runtime, identity: RunIdentity) -> None:
    lease = rt.broker.lease(P, identity, ttl=60)
    plus_two = timezone(timedelta(hours=2))
    # T0+61 s expressed in UTC+2: later in time, although its local clock reads 14:01.
    assert rt.broker.sweep_expired(now=(T0 + timedelta(seconds=30)).astimezone(plus_two)) == 0
    assert rt.broker.sweep_expired(now=(T0 + timedelta(seconds=61)).astimezone(plus_two)) == 1
    assert rt.ledger.get_lease(lease.lease_id).state is LeaseState.EXPIRED


# --- issuers ---------------------------------------------------------------------------------


class FakeIssuer:
    """A dynamic issuer that mints a per-lease credential and records revokes."""

    name = "fake"

    def __init__(self) -> None:
        self.revoked: list[str] = []

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential:
        return IssuedCredential(value=f"minted-{lease_id}", expires_at=T0 + timedelta(seconds=30),
                                state={"role": f"rl_{lease_id}"})

    def revoke(self, lease: Lease) -> None:
        self.revoked.append(lease.issuer_state["role"])


def test_dynamic_issuer_state_expiry_and_revoke(rt: Runtime, identity: RunIdentity) -> None:
    fake = FakeIssuer()
    rt.broker.issuers.register(fake)
    rt.store.update_metadata(P, {"issuer": "fake"})
    lease = rt.broker.lease(P, identity, ttl=3600)
    assert lease.value == f"minted-{lease.lease_id}" and lease.issuer == "fake"
    assert lease.expires_at == T0 + timedelta(seconds=30)  # the credential's own expiry wins
    assert lease.value in rt.broker.redactor
    assert rt.ledger.get_lease(lease.lease_id).issuer_state == {"role": f"rl_{lease.lease_id}"}
    rt.broker.revoke(lease.lease_id)
    assert fake.revoked == [f"rl_{lease.lease_id}"]


def test_credential_is_revoked_again_when_recording_fails(rt: Runtime, identity: RunIdentity,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeIssuer()
    rt.broker.issuers.register(fake)
    rt.store.update_metadata(P, {"issuer": "fake"})

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(rt.ledger, "record_lease", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rt.broker.lease(P, identity)
    assert len(fake.revoked) == 1


def test_unknown_issuer_is_a_config_error(rt: Runtime, identity: RunIdentity) -> None:
    rt.store.update_metadata(P, {"issuer": "nonexistent"})
    with pytest.raises(ConfigError, match="nonexistent"):
        rt.broker.lease(P, identity)
    assert rt.ledger.find_leases() == []


class FlakyIssuer(FakeIssuer):
    """Revoking one chosen lease fails (an unreachable target); the others succeed."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[str] = set()

    def revoke(self, lease: Lease) -> None:
        if lease.lease_id in self.broken:
            raise ConnectionError("target unreachable")
        super().revoke(lease)


@pytest.mark.parametrize("bulk", ["revoke_run", "sweep_expired"])
def test_bulk_revocation_goes_on_past_a_failing_issuer(rt: Runtime, identity: RunIdentity, bulk: str) -> None:
    flaky = FlakyIssuer()
    rt.broker.issuers.register(flaky)
    rt.store.update_metadata(P, {"issuer": "flaky"})
    leases = [rt.broker.lease(P, identity, ttl=60) for _ in range(3)]
    flaky.broken.add(leases[0].lease_id)  # the first one closed would have stopped the loop before
    with pytest.raises(RevocationIncompleteError) as caught:
        if bulk == "revoke_run":
            rt.broker.revoke_run(identity.run_id or "")
        else:
            rt.broker.sweep_expired(now=T0 + timedelta(days=1))
    assert caught.value.closed == 2 and caught.value.failed == [leases[0].lease_id]
    states = {lease.lease_id: rt.ledger.get_lease(lease.lease_id).state for lease in leases}
    assert states[leases[0].lease_id] is LeaseState.ACTIVE
    assert all(states[lease.lease_id] is not LeaseState.ACTIVE for lease in leases[1:])
    errors = [e for e in rt.ledger.events(AuditQuery()) if e.outcome.value == "error"]
    assert [e.lease_id for e in errors] == [leases[0].lease_id]
