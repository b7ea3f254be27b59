"""Vault-specific behaviour against a real OpenBao server: layout, auth, renewal, denials, races, bad input.

Everything here is answered by the session's OpenBao (``support.openbao``):
logins, renewals, max-TTL caps, use-limited secret ids, namespaces, policy
denials, KV v1 mounts. Requests are counted and their correlation ids read
from the server's own audit log.

Faults a real server cannot be made to produce, done with pytest-mock:
* the two race tests force an interleaving (both writers read the same state
  before either commits), by holding ``VaultStore._read_state`` /
  ``_write_state`` at a barrier -- a server cannot be told to hold requests.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runlease.audit import correlation
from runlease.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidValueError,
    StoreAccessDeniedError,
    StoreUnavailableError,
)
from runlease.models import RunIdentity, SecretPath, Stage, utcnow
from runlease.rotation.policy import RotationPolicy
from runlease.rotation.status import scan
from runlease.store.vault import VaultOptions, VaultStore, parse_time
from runlease.store import vault_auth
from runlease.store.vault_auth import VaultClientOptions, VaultSession
from store_support import free_port, token_file, vault_options
from support.openbao import OpenBao, unique

P = SecretPath.parse("dev/connections/warehouse")
FORBIDDEN = SecretPath.parse("dev/connections/forbidden")
PASSWORD = "Vault-Pa55word-never-logged"  # runlease: allow secret-assignment (test fixture)
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": PASSWORD}
ALL_OF_SECRET = 'path "secret/*" { capabilities = ["create", "read", "update", "patch", "delete", "list"] }\n'


def kv(bao: OpenBao) -> Any:
    return bao.client().secrets.kv.v2


def approle_options(bao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, policy: str = ALL_OF_SECRET,
                    **role: Any) -> dict[str, Any]:
    """Store options logging in with a fresh AppRole (its own mount) whose policy is ``policy``."""
    name = bao.policy(unique("rl"), policy)
    mount, role_id, secret_id = bao.approle([name], **role)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id)
    return vault_options(bao, tmp_path, auth={"method": "approle", "role_id": role_id, "mount": mount})


def session_for(opts: dict[str, Any], clock: Any = time.monotonic) -> VaultSession:
    return VaultSession(VaultClientOptions.model_validate({k: v for k, v in opts.items() if k != "prefix"}),
                        clock=clock)


# -- layout --------------------------------------------------------------------------


def test_layout_kv_versions_state_record_and_mirror(openbao: OpenBao, tmp_path: Path) -> None:
    prefix = f"team/{unique('runlease')}"
    store = VaultStore.from_options(vault_options(openbao, tmp_path, prefix=prefix))
    mark = openbao.audit_mark()
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    value_path = f"{prefix}/dev/connections/warehouse"
    meta = kv(openbao).read_secret_metadata(path=value_path)["data"]
    assert sorted(meta["versions"]) == ["1", "2"] and meta["cas_required"] is True
    assert kv(openbao).read_secret_version(path=value_path, version=1, raise_on_deleted_version=True)["data"]["data"] == {"value": CONN}
    assert {k: v for k, v in (meta["custom_metadata"] or {}).items() if k.startswith("runlease-stage")} == {
        "runlease-stage-CURRENT": "1", "runlease-stage-PENDING": "2"}
    state = kv(openbao).read_secret_version(path=f"{prefix}/_state/dev/connections/warehouse", raise_on_deleted_version=True)["data"]["data"]
    assert state["stages"] == {"CURRENT": 1, "PENDING": 2}
    # check-and-set on every data write, values and state records alike (the audit log shows the bodies'
    # keys; the values are HMACed there)
    writes = [r for r in openbao.requests(mark) if r["operation"] in ("create", "update") and "/data/" in r["path"]]
    assert writes and all("cas" in ((r.get("data") or {}).get("options") or {}) for r in writes)


def test_operator_custom_metadata_survives_the_mirror(openbao: OpenBao, tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    store.put(P, CONN)
    vp = f"{store.prefix}/{P}"
    custom = kv(openbao).read_secret_metadata(path=vp)["data"]["custom_metadata"]
    kv(openbao).update_metadata(path=vp, custom_metadata={**custom, "owner": "data-platform"})
    store.move_stage(P, Stage.PENDING, 1)
    custom = kv(openbao).read_secret_metadata(path=vp)["data"]["custom_metadata"]
    assert custom["owner"] == "data-platform" and custom["runlease-stage-PENDING"] == "1"


def test_every_request_carries_the_run_correlation_id(openbao: OpenBao, tmp_path: Path) -> None:
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    identity = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="manual__2024", task_id="load", try_number=2)
    mark = openbao.audit_mark()
    with correlation.bound(identity):
        store.put(P, CONN)
        store.get(P)
    bound = openbao.requests(mark)
    assert bound and {openbao.correlation(r) for r in bound} == {correlation.correlation_id(identity)}
    mark = openbao.audit_mark()
    store.resolve(P)
    assert {openbao.correlation(r) for r in openbao.requests(mark)} == {correlation.process_id()}


def test_rotation_status_reads_vault_times_with_their_zone(openbao: OpenBao, tmp_path: Path) -> None:
    """Bug 1: fractional seconds dropped the zone, so ``is_due`` compared naive with aware and crashed."""
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    store.put(P, CONN)
    store.update_metadata(P, RotationPolicy(rotator="token", interval_s=3600).to_metadata())
    [status] = scan(store, "dev/")
    assert status.current_created_at is not None and status.current_created_at.tzinfo is not None
    assert not status.is_due(utcnow())
    info = store.info(P)
    assert info.created_at.tzinfo is not None and info.updated_at.tzinfo is not None
    assert abs((utcnow() - info.updated_at).total_seconds()) < 300
    assert parse_time("2024-05-01T10:00:00.123456789+02:00").utcoffset().total_seconds() == 7200


# -- namespaces and auth methods -------------------------------------------------------


def test_namespace_header_and_isolation(openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = unique("team")
    openbao.client().write(f"sys/namespaces/{ns}")
    openbao.client(namespace=ns).sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    name = openbao.policy("all", ALL_OF_SECRET, namespace=ns)
    mount, role_id, secret_id = openbao.approle([name], namespace=ns)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id)
    store = VaultStore.from_options(vault_options(
        openbao, tmp_path, namespace=ns, auth={"method": "approle", "role_id": role_id, "mount": mount}))
    mark = openbao.audit_mark()
    store.put(P, CONN)
    sent = openbao.requests(mark)
    assert sent and {r["namespace"]["path"] for r in sent} == {f"{ns}/"}
    assert openbao.client(namespace=ns).secrets.kv.v2.read_secret_version(path=f"{store.prefix}/{P}", raise_on_deleted_version=True)
    with pytest.raises(Exception, match="404|None"):
        kv(openbao).read_secret_version(path=f"{store.prefix}/{P}", raise_on_deleted_version=True)
    # the namespace's own AppRole login happened inside the namespace
    assert [r["namespace"]["path"] for r in openbao.logins(mark)] == [f"{ns}/"]


def test_one_login_per_process_shared_by_stores(openbao: OpenBao, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    opts = approle_options(openbao, tmp_path, monkeypatch)
    mark = openbao.audit_mark()
    first = VaultStore.from_options(opts)
    second = VaultStore.from_options({**opts, "prefix": unique("elsewhere")})
    first.put(P, CONN)
    for _ in range(3):
        first.get(P)
        second.list()
    assert first.session is second.session
    assert len(openbao.logins(mark, opts["auth"]["mount"])) == 1 and first.session.logins == 1


def _rsa_jwt_issuer() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def _jwt(key: Any, subject: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": subject, "aud": "runlease", "iat": now, "nbf": now - 5, "exp": now + 600}, key,
                      algorithm="RS256")


def _jwt_mount(bao: OpenBao, path: str, public_pem: str, role: str) -> None:
    bao.enable_auth("jwt", path)
    c = bao.client()
    c.write(f"auth/{path}/config", jwt_validation_pubkeys=[public_pem])
    name = bao.policy(unique("rl"), ALL_OF_SECRET)
    c.write(f"auth/{path}/role/{role}", role_type="jwt", user_claim="sub", bound_audiences=["runlease"],
            token_policies=[name], token_ttl="10m")


def test_kubernetes_login_rereads_the_rotated_service_account_token(openbao: OpenBao, tmp_path: Path) -> None:
    """OpenBao's kubernetes method needs a Kubernetes API (TokenReview) to validate a token; the same login
    wire format (``POST auth/<mount>/login`` with ``role`` and ``jwt``) is served here by a JWT mount."""
    key, pem = _rsa_jwt_issuer()
    mount = unique("k8s")
    _jwt_mount(openbao, mount, pem, "runlease")
    jwt_file = tmp_path / "sa-token"
    first, second = _jwt(key, "system:serviceaccount:ml:runner"), _jwt(key, "system:serviceaccount:ml:runner2")
    jwt_file.write_text(first + "\n")
    store = VaultStore.from_options(vault_options(
        openbao, tmp_path, auth={"method": "kubernetes", "role": "runlease", "jwt_file": str(jwt_file), "mount": mount}))
    mark = openbao.audit_mark()
    store.put(P, CONN)
    jwt_file.write_text(second + "\n")  # kubelet rotated the projected token
    openbao.client().auth.token.revoke(store.session._client.token)
    assert store.get(P).value == CONN
    logins = openbao.logins(mark, mount)
    assert len(logins) == 2 and store.session.logins == 2
    # the audit log HMACs the JWT; two different HMACs prove the second login sent the rotated file
    assert logins[0]["data"]["jwt"] != logins[1]["data"]["jwt"]


def test_jwt_login_for_ci_reads_the_id_token_from_env(openbao: OpenBao, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key, pem = _rsa_jwt_issuer()
    mount = unique("jwt")
    _jwt_mount(openbao, mount, pem, "ci")
    monkeypatch.setenv("CI_VAULT_ID_TOKEN", _jwt(key, "repo:ml/pipelines"))
    store = VaultStore.from_options(vault_options(
        openbao, tmp_path, auth={"method": "jwt", "role": "ci", "jwt_env": "CI_VAULT_ID_TOKEN", "mount": mount}))
    mark = openbao.audit_mark()
    store.put(P, CONN)
    assert len(openbao.logins(mark, mount)) == 1
    token = openbao.client().auth.token.lookup(store.session._client.token)["data"]
    assert token["path"] == f"auth/{mount}/login" and token["meta"]["role"] == "ci"


def test_bao_environment_variables_are_honoured(openbao: OpenBao, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT", "VAULT_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vault_auth, "_sessions", {})  # a fresh process: no login cached from other tests
    monkeypatch.setenv("BAO_ADDR", openbao.url)
    monkeypatch.setenv("BAO_TOKEN", openbao.root_token)
    store = VaultStore.from_options({"prefix": unique("bao-env")})
    assert store.put(P, CONN) == 1 and store.session.address == openbao.url
    monkeypatch.setenv("BAO_CACERT", str(tmp_path / "no-such-ca.pem"))
    with pytest.raises(ConfigError, match="no-such-ca.pem.*BAO_CACERT.*does not exist"):
        VaultStore.from_options({"prefix": "x"})


# -- renewal, max TTL, re-login, denials ------------------------------------------------------


def test_token_is_renewed_before_expiry_and_replaced_when_not_renewable(
        openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    opts = approle_options(openbao, tmp_path, monkeypatch, token_ttl="300s", token_max_ttl="3600s")
    session = session_for(opts, clock=lambda: now[0])
    store = VaultStore(VaultOptions.model_validate(opts), session=session)
    store.put(P, CONN)
    now[0] += 150  # half the TTL: nothing to do
    store.get(P)
    assert (session.logins, session.renewals) == (1, 0)
    mark = openbao.audit_mark()
    now[0] += 60  # past two thirds: renew-self, same token
    store.get(P)
    assert (session.logins, session.renewals) == (1, 1)
    assert [r["path"] for r in openbao.requests(mark)].count("auth/token/renew-self") == 1
    # batch tokens are never renewable: at two thirds of their TTL comes a fresh login instead
    batch = approle_options(openbao, tmp_path, monkeypatch, token_ttl="300s", token_type="batch")
    session = session_for(batch, clock=lambda: now[0])
    store = VaultStore(VaultOptions.model_validate(batch), session=session)
    store.put(P, CONN)
    now[0] += 250
    store.get(P)
    assert (session.logins, session.renewals) == (2, 0)


def test_reads_keep_working_through_the_tokens_max_ttl(openbao: OpenBao, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 3: renewals shrink to the max TTL, then Vault answers 500, then 403; reads must never see that.

    Real time on a real server: tokens live 3 s, at most 5 s; reads run for 7 s.
    """
    opts = approle_options(openbao, tmp_path, monkeypatch, token_ttl="3s", token_max_ttl="5s")
    store = VaultStore.from_options(opts)
    store.put(P, CONN)
    deadline = time.monotonic() + 7
    reads = 0
    while time.monotonic() < deadline:
        assert store.get(P).value == CONN  # never an error
        reads += 1
        time.sleep(0.05)
    assert reads > 20
    assert store.session.logins >= 2  # a fresh login replaced the token before its max TTL
    assert store.session.denials == 0


def test_revoked_token_costs_exactly_one_relogin(openbao: OpenBao, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    opts = approle_options(openbao, tmp_path, monkeypatch)
    store = VaultStore.from_options(opts)
    store.put(P, CONN)
    mark = openbao.audit_mark()
    openbao.client().auth.token.revoke(store.session._client.token)
    assert store.get(P).value == CONN
    assert len(openbao.logins(mark, opts["auth"]["mount"])) == 1 and store.session.logins == 2


def _deny_forbidden_policy(prefix: str) -> str:
    return ALL_OF_SECRET + "".join(
        f'path "secret/{family}/{prefix}/{sub}{FORBIDDEN}" {{ capabilities = ["deny"] }}\n'
        for family in ("data", "metadata") for sub in ("", "_state/"))


def test_a_denial_is_not_an_expired_token(openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Bug 4: 20 denials made 20 logins, and with a single-use secret id the first one broke allowed reads."""
    caplog.set_level(logging.DEBUG)
    prefix = unique("rl")
    root = VaultStore.from_options(vault_options(openbao, tmp_path, prefix=prefix))
    root.put(P, CONN)
    root.put(FORBIDDEN, CONN)
    opts = {**approle_options(openbao, tmp_path, monkeypatch, policy=_deny_forbidden_policy(prefix),
                              secret_id_num_uses=1), "prefix": prefix}
    store = VaultStore.from_options(opts)
    mark = openbao.audit_mark()
    assert store.get(P).value == CONN
    for _ in range(20):
        with pytest.raises(StoreAccessDeniedError) as caught:
            store.get(FORBIDDEN)
    assert store.get(P).value == CONN  # the single-use secret id was never needed again
    assert len(openbao.logins(mark, opts["auth"]["mount"])) == 1 and store.session.logins == 1
    message = str(caught.value)
    assert openbao.url in message and "approle" in message and "403" in message and "policy" in message
    secret_id = os.environ["VAULT_SECRET_ID"]
    for secret in (PASSWORD, secret_id, store.session._client.token):
        assert secret not in message and secret not in caplog.text


def test_failed_login_names_the_method_not_the_secret(openbao: OpenBao, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    opts = approle_options(openbao, tmp_path, monkeypatch)
    monkeypatch.setenv("VAULT_SECRET_ID", "a-wrong-secret-id")
    with pytest.raises(StoreAccessDeniedError, match="login failed.*invalid") as caught:
        VaultStore.from_options(opts).resolve(P)
    assert "a-wrong-secret-id" not in str(caught.value)


# -- transport failures ----------------------------------------------------------------------


def test_unreachable_vault_fails_in_bounded_time_naming_the_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    store = VaultStore.from_options({"address": f"http://127.0.0.1:{port}", "timeout": 2,
                                     "auth": {"method": "token", "token_file": str(token_file(tmp_path, "hvs.x"))}})
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*unreachable"):
        store.get(P)


def test_silent_vault_times_out_naming_the_address(tmp_path: Path) -> None:
    """A server that accepts connections but never answers: the request timeout bounds the wait."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        port = black_hole.getsockname()[1]
        store = VaultStore.from_options({"address": f"http://127.0.0.1:{port}", "timeout": 0.5,
                                         "auth": {"method": "token", "token_file": str(token_file(tmp_path, "hvs.x"))}})
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*did not answer within 0.5s"):
            store.get(P)


def test_tls_failure_is_named_as_tls_not_unreachable(openbao: OpenBao, tmp_path: Path) -> None:
    """Bug 8: https:// to a plain-HTTP server fails the handshake; the error says TLS and where to look."""
    port = openbao.url.rsplit(":", 1)[1]
    store = VaultStore.from_options({"address": f"https://127.0.0.1:{port}", "timeout": 5,
                                     "auth": {"method": "token", "token_file": str(token_file(tmp_path, "hvs.x"))}})
    with pytest.raises(StoreUnavailableError, match="TLS handshake failed.*CA bundle") as caught:
        store.get(P)
    assert "unreachable" not in str(caught.value)


def test_an_untrusted_certificate_is_a_tls_error_and_the_ca_bundle_fixes_it(
        openbao_tls: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 8 on a real TLS server: verification failure named as such; `verify`, VAULT_CACERT, BAO_CACERT work."""
    for name in ("VAULT_CACERT", "BAO_CACERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vault_auth, "_sessions", {})
    with pytest.raises(StoreUnavailableError, match="TLS handshake failed.*certificate verify failed") as caught:
        VaultStore.from_options(vault_options(openbao_tls, tmp_path)).resolve(P)
    assert "unreachable" not in str(caught.value)
    store = VaultStore.from_options(vault_options(openbao_tls, tmp_path, verify=str(openbao_tls.ca_file)))
    assert store.put(P, CONN) == 1
    for variable in ("VAULT_CACERT", "BAO_CACERT"):
        monkeypatch.setattr(vault_auth, "_sessions", {})
        monkeypatch.setenv(variable, str(openbao_tls.ca_file))
        assert VaultStore.from_options({**vault_options(openbao_tls, tmp_path), "prefix": store.prefix}).get(P).value == CONN
        monkeypatch.delenv(variable)


def test_missing_ca_bundle_is_a_config_error_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle .*missing.pem .*store option 'verify'.*does not exist"):
        VaultStore.from_options({"address": "https://127.0.0.1:1", "verify": str(tmp_path / "missing.pem")})


# -- the mount: KV v2 or a clear refusal -------------------------------------------------


def test_kv_v1_and_missing_mounts_are_refused(openbao: OpenBao, tmp_path: Path) -> None:
    """Bug 5: KV v1 overwrote every version and ignored check-and-set; a missing mount passed init."""
    v1 = openbao.enable_engine("kv", options={"version": "1"})
    store = VaultStore.from_options(vault_options(openbao, tmp_path, mount=v1))
    with pytest.raises(StoreUnavailableError, match=f"mount '{v1}' is KV version 1; runlease needs KV version 2"):
        store.check()
    with pytest.raises(StoreUnavailableError, match="KV v1 mount overwrites"):
        store.put(P, CONN)
    missing = VaultStore.from_options(vault_options(openbao, tmp_path, mount=unique("nomount")))
    with pytest.raises(StoreUnavailableError, match="no (KV v2 )?secrets engine at"):
        missing.check()
    with pytest.raises(StoreUnavailableError, match="no KV v2 secrets engine at"):
        missing.put(P, CONN)
    transit = openbao.enable_engine("transit")
    with pytest.raises(StoreUnavailableError, match="'transit' secrets engine"):
        VaultStore.from_options(vault_options(openbao, tmp_path, mount=transit)).check()


# -- values and state written outside runlease ---------------------------------------------


def test_malformed_values_name_the_secret_never_the_value(openbao: OpenBao, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    store.put(P, CONN)
    vp = f"{store.prefix}/{P}"
    # written by hand, outside runlease: no "value" field, then a value of the wrong type
    kv(openbao).create_or_update_secret(path=vp, secret={"password": PASSWORD}, cas=1)
    kv(openbao).create_or_update_secret(path=vp, secret={"value": [PASSWORD]}, cas=2)
    for version in (2, 3):
        with pytest.raises(InvalidValueError) as caught:
            store.get(P, version=version)
        message = str(caught.value)
        assert str(P) in message and f"version {version}" in message and PASSWORD not in message
    kv(openbao).create_or_update_secret(path=f"{store.prefix}/_state/{P}", secret={"stages": PASSWORD}, cas=1)
    with pytest.raises(IntegrityError, match="_state/dev/connections/warehouse") as caught:
        store.resolve(P)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text


# -- races (interleaving forced with pytest-mock) --------------------------------------------


def _hold(mocker: Any, method: str, *, after: bool, parties: int = 2) -> None:
    """Make the first ``parties`` calls of ``VaultStore.<method>`` wait for each other (before or after the call)."""
    original = getattr(VaultStore, method)
    barrier = threading.Barrier(parties, timeout=20)
    remaining = [parties]
    lock = threading.Lock()

    def held(self: VaultStore, *args: Any, **kwargs: Any) -> Any:
        with lock:
            wait = remaining[0] > 0
            remaining[0] -= 1
        if wait and not after:
            barrier.wait()
        result = original(self, *args, **kwargs)
        if wait and after:
            barrier.wait()
        return result

    mocker.patch.object(VaultStore, method, autospec=True, side_effect=held)


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


def test_two_rotators_moving_current_from_the_same_state(openbao: OpenBao, tmp_path: Path, mocker: Any) -> None:
    """Both read "CURRENT=1" before either writes; KV check-and-set on the real server lets exactly one through."""
    opts = vault_options(openbao, tmp_path)
    a, b = VaultStore.from_options(opts), VaultStore.from_options(opts)
    a.put(P, CONN)
    a.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    a.put(P, {**CONN, "password": "three"}, stage=Stage.PENDING)
    state_path = f"{a.prefix}/_state/{P}"
    before = kv(openbao).read_secret_metadata(path=state_path)["data"]["current_version"]
    _hold(mocker, "_read_state", after=True)
    results = _run_both(lambda: a.move_stage(P, Stage.CURRENT, 2, expected=1),
                        lambda: b.move_stage(P, Stage.CURRENT, 3, expected=1))
    mocker.stopall()
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert len(conflicts) == 1 and results.count(None) == 1, results
    winner = 2 if results[0] is None else 3
    assert a.resolve(P).version == winner == b.resolve(P).version
    assert kv(openbao).read_secret_metadata(path=state_path)["data"]["current_version"] == before + 1
    assert f"expected v1, found {winner}" in str(conflicts[0])


def test_concurrent_puts_both_land_and_current_only_moves_forward(openbao: OpenBao, tmp_path: Path,
                                                                  mocker: Any) -> None:
    """Both writers reach the state commit at once; the loser re-applies or renumbers, never regresses."""
    opts = vault_options(openbao, tmp_path)
    a, b = VaultStore.from_options(opts), VaultStore.from_options(opts)
    a.put(P, CONN)
    _hold(mocker, "_write_state", after=False)
    results = _run_both(lambda: a.put(P, {**CONN, "password": "from-a"}),  # runlease: allow secret-assignment (test fixture)
                        lambda: b.put(P, {**CONN, "password": "from-b"}))  # runlease: allow secret-assignment (test fixture)
    mocker.stopall()
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 2
    info = a.info(P)
    assert info.stages == {Stage.CURRENT: max(results), Stage.PREVIOUS: min(results)}
    assert a.get(P, version=results[0]).value["password"] == "from-a"
    assert a.get(P, version=results[1]).value["password"] == "from-b"
    # any version that lost its number was soft-deleted, so nothing unlabelled stays readable
    live = [v.version for v in a.history(P) if not v.deprecated]
    assert sorted(live) == sorted([1, *results])


# -- options ---------------------------------------------------------------------------------


def test_options_are_validated_without_echoing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="adress"):
        VaultStore.from_options({"adress": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="auth.token") as caught:
        VaultStore.from_options({"address": "http://127.0.0.1:1", "auth": {"method": "token", "token": "hvs.INLINE"}})
    assert "hvs.INLINE" not in str(caught.value)
    with pytest.raises(ConfigError, match="role_id is required"):
        VaultStore.from_options({"address": "http://127.0.0.1:1", "auth": {"method": "approle"}})
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("BAO_ADDR", raising=False)
    with pytest.raises(ConfigError, match="VAULT_ADDR or BAO_ADDR"):
        VaultStore.from_options({})


def test_proxy_settings_from_the_environment_are_still_honoured(openbao: OpenBao, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read once per session (not per request), but HTTP(S)_PROXY/NO_PROXY still apply."""
    monkeypatch.setattr(vault_auth, "_sessions", {})
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # a proxy that is not there
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        VaultStore.from_options(vault_options(openbao, tmp_path)).resolve(P)
    monkeypatch.setattr(vault_auth, "_sessions", {})
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    assert store.put(P, CONN) == 1


def test_a_sealed_vault_is_a_clear_store_error(tmp_path: Path) -> None:
    """A real fault a real server produces: sealed (HTTP 503). Its own server, since sealing is for good."""
    from support.openbao import require_bao, start_openbao, stop_openbao

    server = start_openbao(require_bao())
    try:
        store = VaultStore.from_options(vault_options(server, tmp_path))
        store.put(P, CONN)
        server.client().sys.seal()
        with pytest.raises(StoreUnavailableError, match=r"answered HTTP 503 while reading .*sealed") as caught:
            store.get(P)
        assert caught.value.exit_code == 8 and store.session.logins == 1
    finally:
        stop_openbao(server)
