"""Vault-specific behaviour against the fake Vault HTTP API: layout, auth, 403s, races, bad input."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from fake_vault import FakeVault, Recorded
from runlease import correlation
from runlease.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidValueError,
    StoreAccessDeniedError,
    StoreUnavailableError,
)
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.store.vault import VaultOptions, VaultStore
from runlease.store.vault_auth import VaultClientOptions, VaultSession
from store_support import free_port, vault_options

P = SecretPath.parse("dev/connections/warehouse")
PASSWORD = "Vault-Pa55word-never-logged"  # runlease: allow secret-assignment (test fixture)
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": PASSWORD}


def approle_options(fake: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> dict[str, Any]:
    fake.add_approle("role-123", "secret-id-xyz")
    monkeypatch.setenv("VAULT_SECRET_ID", "secret-id-xyz")
    return vault_options(fake, tmp_path, auth={"method": "approle", "role_id": "role-123"}, **extra)


def data_writes(fake: FakeVault) -> list[Recorded]:
    return [r for r in fake.requests if r.method in ("POST", "PUT") and "/data/" in r.path]


def test_layout_kv_versions_state_record_and_mirror(fake_vault: FakeVault, tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(fake_vault, tmp_path, prefix="team/runlease"))
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    value = fake_vault.entry("team/runlease/dev/connections/warehouse")
    assert value is not None and sorted(value.versions) == [1, 2]
    assert value.versions[1]["data"] == {"value": CONN}
    assert value.cas_required is True
    assert {k: v for k, v in (value.custom_metadata or {}).items() if k.startswith("runlease-stage")} == {
        "runlease-stage-CURRENT": "1", "runlease-stage-PENDING": "2"}
    state = fake_vault.entry("team/runlease/_state/dev/connections/warehouse")
    assert state is not None
    assert state.versions[state.current_version]["data"]["stages"] == {"CURRENT": 1, "PENDING": 2}
    # check-and-set on every data write, values and state records alike
    writes = data_writes(fake_vault)
    assert writes and all(isinstance((r.body.get("options") or {}).get("cas"), int) for r in writes)


def test_operator_custom_metadata_survives_the_mirror(fake_vault: FakeVault, tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(fake_vault, tmp_path))
    store.put(P, CONN)
    entry = fake_vault.entry(f"{store.prefix}/{P}")
    assert entry is not None
    entry.custom_metadata = {**(entry.custom_metadata or {}), "owner": "data-platform"}
    store.move_stage(P, Stage.PENDING, 1)
    assert entry.custom_metadata["owner"] == "data-platform"
    assert entry.custom_metadata["runlease-stage-PENDING"] == "1"


def test_every_request_carries_the_run_correlation_id(fake_vault: FakeVault, tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(fake_vault, tmp_path))
    identity = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="manual__2024", task_id="load", try_number=2)
    start = len(fake_vault.requests)
    with correlation.bound(identity):
        store.put(P, CONN)
        store.get(P)
    bound = fake_vault.requests[start:]
    assert bound and {r.headers.get("X-Correlation-ID") for r in bound} == {correlation.correlation_id(identity)}
    start = len(fake_vault.requests)
    store.resolve(P)
    assert {r.headers.get("X-Correlation-ID") for r in fake_vault.requests[start:]} == {correlation.process_id()}


def test_namespace_header_and_isolation(fake_vault: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vault.add_namespace("team-a")
    fake_vault.add_approle("role-a", "sid-a", namespace="team-a")
    monkeypatch.setenv("VAULT_SECRET_ID", "sid-a")
    store = VaultStore.from_options(vault_options(
        fake_vault, tmp_path, namespace="team-a", auth={"method": "approle", "role_id": "role-a"}))
    store.put(P, CONN)
    assert {r.namespace for r in fake_vault.requests} == {"team-a"}
    assert fake_vault.entry(f"{store.prefix}/{P}", namespace="team-a") is not None
    assert fake_vault.entry(f"{store.prefix}/{P}") is None
    # the namespace's own AppRole login happened inside the namespace
    assert [r.namespace for r in fake_vault.logins()] == ["team-a"]


def test_one_login_per_process_shared_by_stores(fake_vault: FakeVault, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    opts = approle_options(fake_vault, tmp_path, monkeypatch)
    first = VaultStore.from_options(opts)
    second = VaultStore.from_options({**opts, "prefix": "elsewhere"})
    first.put(P, CONN)
    for _ in range(3):
        first.get(P)
        second.list()
    assert first.session is second.session
    assert len(fake_vault.logins()) == 1
    assert fake_vault.logins()[0].body == {"role_id": "role-123", "secret_id": "secret-id-xyz"}


def test_kubernetes_login_rereads_the_rotated_service_account_token(fake_vault: FakeVault, tmp_path: Path) -> None:
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text("sa-jwt-1\n")
    fake_vault.add_jwt_role("runlease", "sa-jwt-1", mount="kubernetes")
    fake_vault.add_jwt_role("runlease", "sa-jwt-2", mount="kubernetes")
    store = VaultStore.from_options(vault_options(
        fake_vault, tmp_path, auth={"method": "kubernetes", "role": "runlease", "jwt_file": str(jwt_file)}))
    store.put(P, CONN)
    jwt_file.write_text("sa-jwt-2\n")  # kubelet rotated the projected token
    token = next(t for t, info in fake_vault.tokens.items() if info.path == "auth/kubernetes/login")
    fake_vault.revoke(token)
    assert store.get(P).value == CONN
    assert [r.body["jwt"] for r in fake_vault.logins()] == ["sa-jwt-1", "sa-jwt-2"]
    assert {r.path for r in fake_vault.logins()} == {"auth/kubernetes/login"}


def test_jwt_login_for_ci_reads_the_id_token_from_env(fake_vault: FakeVault, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vault.add_jwt_role("ci", "ci-id-token")
    monkeypatch.setenv("CI_VAULT_ID_TOKEN", "ci-id-token")
    store = VaultStore.from_options(vault_options(
        fake_vault, tmp_path, auth={"method": "jwt", "role": "ci", "jwt_env": "CI_VAULT_ID_TOKEN"}))
    store.put(P, CONN)
    assert [(r.path, r.body) for r in fake_vault.logins()] == [("auth/jwt/login", {"role": "ci", "jwt": "ci-id-token"})]


def test_token_is_renewed_before_expiry_and_replaced_when_not_renewable(
        fake_vault: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    opts = approle_options(fake_vault, tmp_path, monkeypatch)
    fake_vault.login_ttl = 300
    session = VaultSession(VaultClientOptions.model_validate({k: v for k, v in opts.items() if k != "prefix"}),
                           clock=lambda: now[0])
    store = VaultStore(VaultOptions.model_validate(opts), session=session)
    store.put(P, CONN)
    now[0] += 150  # half the TTL: nothing to do
    store.get(P)
    assert (session.logins, session.renewals) == (1, 0)
    now[0] += 60  # past two thirds: renew-self, same token
    store.get(P)
    assert (session.logins, session.renewals) == (1, 1)
    assert [r.path for r in fake_vault.requests].count("auth/token/renew-self") == 1
    fake_vault.login_renewable = False
    fake_vault.revoke(next(t for t, i in fake_vault.tokens.items() if i.path == "auth/approle/login"))
    store.get(P)  # 403 -> one fresh login, now with a non-renewable token
    assert session.logins == 2
    now[0] += 250
    store.get(P)  # not renewable: log in again instead of renewing
    assert (session.logins, session.renewals) == (3, 1)


def test_revoked_token_costs_exactly_one_relogin(fake_vault: FakeVault, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = VaultStore.from_options(approle_options(fake_vault, tmp_path, monkeypatch))
    store.put(P, CONN)
    for token in list(fake_vault.tokens):
        if fake_vault.tokens[token].path == "auth/approle/login":
            fake_vault.revoke(token)
    assert store.get(P).value == CONN
    assert len(fake_vault.logins()) == 2


def test_persistent_403_is_one_relogin_then_a_clear_error(fake_vault: FakeVault, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    opts = approle_options(fake_vault, tmp_path, monkeypatch)
    store = VaultStore.from_options(opts)
    store.put(P, CONN)
    fake_vault.deny(f"secret/data/{opts['prefix']}/")
    with pytest.raises(StoreAccessDeniedError) as caught:
        store.get(P)
    message = str(caught.value)
    assert fake_vault.url in message and "approle" in message and "403" in message
    assert len(fake_vault.logins()) == 2
    issued = [t for t, i in fake_vault.tokens.items() if i.path == "auth/approle/login"]
    for secret in (PASSWORD, "secret-id-xyz", *issued):
        assert secret not in message and secret not in caplog.text


def test_failed_login_names_the_method_not_the_secret(fake_vault: FakeVault, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vault.add_approle("role-123", "the-right-one")
    monkeypatch.setenv("VAULT_SECRET_ID", "a-wrong-secret-id")
    store = VaultStore.from_options(vault_options(fake_vault, tmp_path, auth={"method": "approle", "role_id": "role-123"}))
    with pytest.raises(StoreAccessDeniedError, match="login failed.*invalid role or secret ID") as caught:
        store.resolve(P)
    assert "a-wrong-secret-id" not in str(caught.value)


def test_unreachable_vault_fails_in_bounded_time_naming_the_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    store = VaultStore.from_options({"address": f"http://127.0.0.1:{port}", "timeout": 2,
                                     "auth": {"method": "token", "token_file": str(_token(tmp_path))}})
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*unreachable"):
        store.get(P)


def test_silent_vault_times_out_naming_the_address(tmp_path: Path) -> None:
    """A server that accepts connections but never answers: the request timeout bounds the wait."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        port = black_hole.getsockname()[1]
        store = VaultStore.from_options({"address": f"http://127.0.0.1:{port}", "timeout": 0.5,
                                         "auth": {"method": "token", "token_file": str(_token(tmp_path))}})
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*did not answer within 0.5s"):
            store.get(P)


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("hvs.unused")
    return path


def test_malformed_values_name_the_secret_never_the_value(fake_vault: FakeVault, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = VaultStore.from_options(vault_options(fake_vault, tmp_path))
    store.put(P, CONN)
    client = store.session.call("test", lambda c: c)
    vp = f"{store.prefix}/{P}"
    # written by hand, outside runlease: no "value" field, then a value of the wrong type
    client.secrets.kv.v2.create_or_update_secret(path=vp, secret={"password": PASSWORD}, cas=1, mount_point="secret")
    client.secrets.kv.v2.create_or_update_secret(path=vp, secret={"value": [PASSWORD]}, cas=2, mount_point="secret")
    for version in (2, 3):
        with pytest.raises(InvalidValueError) as caught:
            store.get(P, version=version)
        message = str(caught.value)
        assert str(P) in message and f"version {version}" in message and PASSWORD not in message
    client.secrets.kv.v2.create_or_update_secret(
        path=f"{store.prefix}/_state/{P}", secret={"stages": PASSWORD}, cas=1, mount_point="secret")
    with pytest.raises(IntegrityError, match="_state/dev/connections/warehouse") as caught:
        store.resolve(P)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text


def _barrier_on(fake: FakeVault, method: str, fragment: str, parties: int = 2) -> None:
    """Hold the first ``parties`` matching requests until all have arrived (forces an interleaving)."""
    barrier = threading.Barrier(parties, timeout=20)
    remaining = [parties]
    lock = threading.Lock()

    def hook(rec: Recorded) -> None:
        if rec.method != method or fragment not in rec.path:
            return
        with lock:
            if remaining[0] == 0:
                return
            remaining[0] -= 1
        barrier.wait()

    fake.before_request = hook


def _run_both(*calls: Any) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as err:  # noqa: BLE001 - collected for the assertions
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_rotators_moving_current_from_the_same_state(fake_vault: FakeVault, tmp_path: Path) -> None:
    """Both read "CURRENT=1" before either writes; KV check-and-set lets exactly one through."""
    opts = vault_options(fake_vault, tmp_path)
    a, b = VaultStore.from_options(opts), VaultStore.from_options(opts)
    a.put(P, CONN)
    a.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    a.put(P, {**CONN, "password": "three"}, stage=Stage.PENDING)
    state = fake_vault.entry(f"{a.prefix}/_state/{P}")
    assert state is not None
    before = state.current_version
    _barrier_on(fake_vault, "GET", "/_state/")
    results = _run_both(lambda: a.move_stage(P, Stage.CURRENT, 2, expected=1),
                        lambda: b.move_stage(P, Stage.CURRENT, 3, expected=1))
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert len(conflicts) == 1 and results.count(None) == 1, results
    winner = 2 if results[0] is None else 3
    assert a.resolve(P).version == winner == b.resolve(P).version
    assert state.current_version == before + 1  # one state commit, nothing clobbered
    assert f"expected v1, found {winner}" in str(conflicts[0])


def test_concurrent_puts_both_land_and_current_only_moves_forward(fake_vault: FakeVault, tmp_path: Path) -> None:
    """Both writers reach the state commit at once; the loser re-applies or renumbers, never regresses."""
    opts = vault_options(fake_vault, tmp_path)
    a, b = VaultStore.from_options(opts), VaultStore.from_options(opts)
    a.put(P, CONN)
    _barrier_on(fake_vault, "POST", "/_state/")
    results = _run_both(lambda: a.put(P, {**CONN, "password": "from-a"}),  # runlease: allow secret-assignment (test fixture)
                        lambda: b.put(P, {**CONN, "password": "from-b"}))  # runlease: allow secret-assignment (test fixture)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 2
    info = a.info(P)
    assert info.stages == {Stage.CURRENT: max(results), Stage.PREVIOUS: min(results)}
    assert a.get(P, version=results[0]).value["password"] == "from-a"
    assert a.get(P, version=results[1]).value["password"] == "from-b"
    # any version that lost its number was soft-deleted, so nothing unlabelled stays readable
    live = [v.version for v in a.history(P) if not v.deprecated]
    assert sorted(live) == sorted([1, *results])


def test_options_are_validated_without_echoing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="adress"):
        VaultStore.from_options({"adress": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="auth.token") as caught:
        VaultStore.from_options({"address": "http://127.0.0.1:1", "auth": {"method": "token", "token": "hvs.INLINE"}})
    assert "hvs.INLINE" not in str(caught.value)
    with pytest.raises(ConfigError, match="role_id is required"):
        VaultStore.from_options({"address": "http://127.0.0.1:1", "auth": {"method": "approle"}})
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(ConfigError, match="VAULT_ADDR"):
        VaultStore.from_options({})
