"""A real ``runlease serve``, attacked the way a hostile pod would: forged, expired, mis-addressed
tokens, paths it was not granted, claimed identities, other workloads' leases."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from runlease.errors import AccessDeniedError, RunleaseError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, Outcome, RunIdentity
from runlease.remote.http import NotAuthenticatedError
from runlease.runtime import open_runtime

from support.served_home import ServedHome
from support.oidc_issuer import sa_subject

A = sa_subject("ml", "pipeline-a")
KFP_A = RunIdentity(orchestrator="kfp", pipeline="kfp-training-pipeline", run_id="run-a-1", task_id="fetch-data")


def client(served: ServedHome, token: str):
    return open_runtime(served.client_settings(token))


def raw(served: ServedHome, method: str, route: str, token: str | None, body: Any = None) -> tuple[int, str]:
    """One request without the client library, to see exactly what the server answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(served.url + route, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def events(served: ServedHome, **query: Any) -> list:
    rt = served.local()
    try:
        return list(rt.ledger.events(AuditQuery(**query)))
    finally:
        rt.close()


def test_a_verified_workload_leases_its_grant_and_the_audit_shows_verified_vs_claimed(served: ServedHome) -> None:
    rt = client(served, served.issuer.token())
    lease = rt.broker.lease("dev/connections/warehouse", KFP_A, 120)
    assert lease.value["password"] == served.values["warehouse"]
    assert lease.identity.principal == A and lease.identity.run_id == "run-a-1"
    assert rt.broker.revoke(lease.lease_id, "done")

    [event] = [e for e in events(served, action="lease") if e.lease_id == lease.lease_id]
    assert event.principal == A  # the verified subject, not anything the body said
    assert (event.orchestrator, event.pipeline, event.run_id, event.task_id) == (
        "kfp", "kfp-training-pipeline", "run-a-1", "fetch-data")  # recorded as claims
    verified = event.detail["verified"]
    assert verified["method"] == "oidc" and verified["subject"] == A and verified["fields"] == []
    assert verified["issuer"] == served.issuer.issuer
    assert verified["claims"]["namespace"] == "ml" and verified["claims"]["serviceaccount"] == "pipeline-a"
    assert verified["claims"]["pod"].startswith("pipeline-a-pod-")
    served.assert_no_leak(*(e.model_dump_json() for e in events(served)), where="the audit trail")


def test_the_lease_response_is_not_cacheable(served: ServedHome) -> None:
    request = urllib.request.Request(served.url + "/v1/leases", method="POST",
                                     data=json.dumps({"ref": "dev/connections/warehouse"}).encode())
    request.add_header("Authorization", f"Bearer {served.issuer.token()}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Cache-Control"] == "no-store"
        assert json.loads(response.read())["value"]["password"] == served.values["warehouse"]


def test_a_workload_not_granted_a_path_gets_403_and_the_denial_is_audited(served: ServedHome) -> None:
    rt = client(served, served.issuer.token())
    with pytest.raises(AccessDeniedError) as caught:
        rt.broker.lease("dev/connections/finance", KFP_A)
    assert caught.value.exit_code == 6
    served.assert_no_leak(str(caught.value), where="the error")
    status, body = raw(served, "POST", "/v1/leases", served.issuer.token(), {"ref": "dev/connections/finance"})
    assert status == 403 and json.loads(body)["error"]["type"] == "AccessDeniedError"
    served.assert_no_leak(body, where="the 403 body")
    denied = [e for e in events(served, action="lease") if e.outcome is Outcome.DENIED]
    assert len(denied) == 2 and {e.principal for e in denied} == {A}
    assert {e.path for e in denied} == {"dev/connections/finance"}


def test_claiming_another_pipeline_or_principal_does_not_change_the_verified_workload(served: ServedHome) -> None:
    # A principals-only grant for kfp:finance-pipeline exists; pipeline-a claims to be that pipeline
    # and even names the finance service account as its principal.
    token = served.issuer.token()
    body = {"ref": "dev/connections/finance", "claims": {"orchestrator": "kfp", "pipeline": "finance-pipeline",
                                                          "run_id": "victim-run", "task_id": "pay"}}
    status, text = raw(served, "POST", "/v1/leases", token, body)
    assert status == 403, text
    body["claims"]["principal"] = sa_subject("finance", "ledger")
    status, text = raw(served, "POST", "/v1/leases", token, body)
    assert status == 400  # principal is not a claim a request may make at all
    served.assert_no_leak(text, where="the 400 body")
    # ...and the operators' principals-only grant does not match a workload claiming "cli" either.
    status, text = raw(served, "POST", "/v1/leases", token, {"ref": "dev/connections/finance",
                                                             "claims": {"orchestrator": "cli", "pipeline": "ops"}})
    assert status == 403
    # The finance service account itself gets it: its grant names the verified workload.
    rt = client(served, served.issuer.token("finance", "ledger"))
    lease = rt.broker.lease("dev/connections/finance", RunIdentity(orchestrator="kfp", pipeline="finance-pipeline"))
    assert lease.identity.principal == sa_subject("finance", "ledger")


@pytest.mark.parametrize("attack", ["other_key", "alg_none", "hs256_public_key", "expired", "wrong_audience",
                                    "wrong_issuer", "not_yet_valid", "garbage", "missing"])
def test_forged_expired_and_misaddressed_tokens_get_401_no_value_audited(served: ServedHome, attack: str) -> None:
    issuer = served.issuer
    token = {
        "other_key": lambda: issuer.forged_with_other_key(),
        "alg_none": lambda: issuer.alg_none(),
        "hs256_public_key": lambda: issuer.hs256_with_public_key(),
        "expired": lambda: issuer.token(issued_ago=3600, lifetime=600),
        "wrong_audience": lambda: issuer.token(audience="https://kubernetes.default.svc"),
        "wrong_issuer": lambda: issuer.token(issuer="https://evil.example.com"),
        "not_yet_valid": lambda: issuer.token(issued_ago=-3600),
        "garbage": lambda: "not-a-jwt",
        "missing": lambda: None,
    }[attack]()
    status, body = raw(served, "POST", "/v1/leases", token, {"ref": "dev/connections/warehouse"})
    assert status == 401, body
    assert json.loads(body)["error"]["type"] == "AuthenticationError"
    served.assert_no_leak(body, where="the 401 body")
    if token is not None:
        rt = client(served, token)
        with pytest.raises(NotAuthenticatedError) as caught:
            rt.broker.lease("dev/connections/warehouse", KFP_A)
        assert caught.value.exit_code == 6
    failures = [e for e in events(served, action="authenticate")]
    assert failures and all(e.outcome is Outcome.DENIED for e in failures)
    assert all(e.detail["reason"] for e in failures)
    if attack in ("other_key", "alg_none", "hs256_public_key", "expired", "wrong_audience"):
        assert failures[0].detail["claimed_subject"] == A  # what it claimed, recorded as a claim
    assert not [e for e in events(served, action="lease")], "nothing was leased"


def test_a_token_cannot_touch_another_workloads_leases(served: ServedHome) -> None:
    a = client(served, served.issuer.token())
    b = client(served, served.issuer.token("finance", "ledger"))
    lease = a.broker.lease("dev/connections/warehouse", KFP_A, 300)
    for attempt in (lambda: b.broker.revoke(lease.lease_id, "hostile"),
                    lambda: b.ledger.get_lease(lease.lease_id),
                    lambda: b.broker.renew(lease.lease_id, 60)):
        with pytest.raises(AccessDeniedError):
            attempt()
    # Revoking "the run" with the victim's run id and pipeline revokes only the caller's own leases.
    assert b.broker.revoke_run("run-a-1", identity=KFP_A) == 0
    assert b.ledger.find_leases(run_id="run-a-1") == []  # not even listed
    assert [x.lease_id for x in a.ledger.find_leases(run_id="run-a-1", state=LeaseState.ACTIVE)] == [lease.lease_id]
    refused = [e for e in events(served) if e.outcome is Outcome.DENIED and e.lease_id == lease.lease_id]
    assert {e.action for e in refused} == {"revoke", "inspect", "renew"}
    assert {e.principal for e in refused} == {sa_subject("finance", "ledger")}
    # The owner's exit handler does revoke it, scoped to its run and pipeline.
    other_pipeline = a.broker.lease("dev/connections/warehouse", KFP_A.model_copy(update={"pipeline": "other"}))
    assert a.broker.revoke_run("run-a-1", identity=KFP_A) == 1
    rt = served.local()
    try:
        assert rt.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED
        assert rt.ledger.get_lease(other_pipeline.lease_id).state is LeaseState.ACTIVE
    finally:
        rt.close()


def test_the_token_file_is_reread_when_the_kubelet_rotates_it(served: ServedHome) -> None:
    settings = served.client_settings(served.issuer.token())
    rt = open_runtime(settings)
    first = rt.broker.lease("dev/connections/warehouse", KFP_A, 60)
    time.sleep(0.01)
    served.issuer.write_token(settings.token_file, served.issuer.token("finance", "ledger"))
    second = rt.broker.lease("dev/connections/finance", KFP_A, 60)
    assert first.identity.principal == A and second.identity.principal == sa_subject("finance", "ledger")


def test_a_new_signing_key_is_picked_up_from_the_jwks(served_factory) -> None:
    served = served_factory("--oidc-jwks-refetch-interval", "0.2")
    from cryptography.hazmat.primitives.asymmetric import rsa

    served.issuer.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    time.sleep(0.3)
    rt = client(served, served.issuer.token(kid="rsa-2"))
    assert rt.broker.lease("dev/connections/warehouse", KFP_A, 60).identity.principal == A
    # A key the issuer stopped publishing stops working once the key set has been refetched
    # (an unknown kid triggers the refetch).
    served.issuer.remove_key("rsa-1")
    time.sleep(0.3)
    status, _ = raw(served, "POST", "/v1/leases", served.issuer.forged_with_other_key(kid="rsa-9"),
                    {"ref": "x/y/z"})
    assert status == 401
    time.sleep(0.3)
    served.issuer.keys["rsa-1"] = served.issuer.keys["rsa-2"]  # sign with rsa-2's key, claim kid rsa-1
    served.issuer.algs["rsa-1"] = "RS256"
    status, body = raw(served, "POST", "/v1/leases", served.issuer.token(kid="rsa-1"),
                       {"ref": "dev/connections/warehouse"})
    assert status == 401 and "key" in json.loads(body)["error"]["message"]


def test_metadata_verify_metrics_and_health_never_carry_a_value(served: ServedHome) -> None:
    rt = client(served, served.issuer.token())
    info = rt.broker.secret_info("dev/connections/warehouse")
    assert info.versions == 1 and info.stages
    with pytest.raises(AccessDeniedError):
        rt.broker.secret_info("dev/connections/finance")
    assert rt.broker.verify_presented_key("dev/tokens/experiment_tracker", served.values["tracker"])
    assert not rt.broker.verify_presented_key("dev/tokens/experiment_tracker", "guess-" + "x" * 20)
    # A malformed body that carries a value is refused without echoing it.
    status, body = raw(served, "POST", "/v1/verify", served.issuer.token(),
                       {"ref": "dev/tokens/experiment_tracker", "presented": [served.values["tracker"]]})
    assert status == 400
    served.assert_no_leak(body, where="a validation error")
    rt.broker.lease("dev/connections/warehouse", KFP_A, 60)
    raw(served, "POST", "/v1/leases", served.issuer.alg_none(), {"ref": "dev/connections/warehouse"})
    status, text = raw(served, "GET", "/metrics", None)
    assert status == 200
    assert "runlease_leases_issued_total 1.0" in text
    assert 'runlease_auth_failures_total{reason="algorithm"} 1.0' in text
    assert not re.search(r"rl[0-9a-f]{24}", text), "a concrete lease id became a metric label"
    assert 'route="/v1/leases"' in text
    status, health = raw(served, "GET", "/healthz", None)
    assert status == 200 and json.loads(health)["status"] == "ok"
    served.assert_no_leak(text, health, where="metrics/health")
    assert served.master_key not in served.server.log_text()
    served.assert_no_leak(served.server.log_text(), where="the server log")


def test_the_server_sweeps_expired_leases_itself(served_factory) -> None:
    served = served_factory("--sweep-interval", "0.3")
    rt = client(served, served.issuer.token())
    lease = rt.broker.lease("dev/connections/warehouse", KFP_A, 1)
    deadline = time.monotonic() + 30
    local = served.local()
    try:
        while local.ledger.get_lease(lease.lease_id).state is LeaseState.ACTIVE:
            assert time.monotonic() < deadline, "the server's sweep never expired the lease"
            time.sleep(0.2)
        assert local.ledger.get_lease(lease.lease_id).state is LeaseState.EXPIRED
    finally:
        local.close()


def test_unreachable_server_is_exit_9(tmp_path) -> None:
    from runlease.errors import BackendError
    from runlease.settings import Settings
    from support.postgres import free_port

    token = tmp_path / "token"
    token.write_text("x")
    rt = open_runtime(Settings(home=tmp_path / "none", server=f"http://127.0.0.1:{free_port()}", token_file=token))
    with pytest.raises(BackendError) as caught:
        rt.broker.lease("dev/connections/warehouse", KFP_A)
    assert caught.value.exit_code == 9 and isinstance(caught.value, RunleaseError)


def test_the_owner_renews_through_the_server_on_a_workload_grant(served: ServedHome, openbao, postgres_server,
                                                                 pg_database) -> None:
    """Renewing is authorized for the verified owner (the ledger's copy of the identity carries no
    proof, so a ``workloads`` grant could not match it) and the issuer really extends the credential
    (a real OpenBao database engine on the test PostgreSQL)."""
    mount = openbao.database_engine(postgres_server, pg_database, {"ro": ("300s", "86400s")})
    local = served.local()
    try:
        local.broker.put("dev/connections/analytics", {"conn_type": "vault", "host": openbao.url,
                                                       "password": openbao.issuer_token(mount)}, RunIdentity(
            orchestrator="test", pipeline="setup"))
        local.store.update_metadata("dev/connections/analytics",
                                    {"issuer": "vault-database", "role": "ro", "mount": mount})
    finally:
        local.close()
    rt = client(served, served.issuer.token())
    lease = rt.broker.lease("dev/connections/analytics", KFP_A, 120)
    renewed = rt.broker.renew(lease.lease_id, 600)
    assert renewed.expires_at > lease.expires_at
    renew_events = [e for e in events(served, action="renew") if e.lease_id == lease.lease_id]
    assert [e.outcome for e in renew_events] == [Outcome.OK] and renew_events[0].principal == A


def test_readiness_and_oversized_bodies(served: ServedHome) -> None:
    status, body = raw(served, "GET", "/readyz", None)
    assert status == 200 and json.loads(body)["status"] == "ready"
    huge = {"ref": "dev/tokens/experiment_tracker", "presented": "x" * 100_000}
    status, body = raw(served, "POST", "/v1/verify", served.issuer.token(), huge)
    assert status == 413 and "too large" in body
    # The server is still fine afterwards.
    assert raw(served, "GET", "/healthz", None)[0] == 200


def test_a_configured_audience_is_the_only_one_accepted(served_factory) -> None:
    served = served_factory("--oidc-audience", "https://runlease.example.com")
    ok = raw(served, "POST", "/v1/leases", served.issuer.token(audience="https://runlease.example.com"),
             {"ref": "dev/connections/warehouse"})
    assert ok[0] == 200
    # A token may name several audiences; one of them must be ours.
    both = raw(served, "POST", "/v1/leases",
               served.issuer.token(audience=["https://kubernetes.default.svc", "https://runlease.example.com"]),
               {"ref": "dev/connections/warehouse"})
    assert both[0] == 200
    status, body = raw(served, "POST", "/v1/leases", served.issuer.token(), {"ref": "dev/connections/warehouse"})
    assert status == 401 and "audience" in json.loads(body)["error"]["message"]


def test_the_lease_endpoint_checks_the_token_before_the_body_and_is_documented(served: ServedHome) -> None:
    # POST /v1/leases is a plain Starlette endpoint (the hot path): the token still comes first,
    # so a caller without one learns nothing about what a valid body looks like...
    bad_body = {"ref": "dev/connections/warehouse", "claims": {"principal": "x"}, "surplus": 1}
    assert raw(served, "POST", "/v1/leases", None, bad_body)[0] == 401
    assert raw(served, "POST", "/v1/leases", served.issuer.alg_none(), bad_body)[0] == 401
    # ...an authenticated one gets a 400 naming the fields, not echoing the input...
    status, text = raw(served, "POST", "/v1/leases", served.issuer.token(), bad_body)
    assert status == 400
    problem = json.loads(text)["error"]
    assert problem["type"] == "InvalidRequest" and "body.surplus" in problem["message"]
    assert raw(served, "POST", "/v1/leases", served.issuer.token(), "not an object")[0] == 400
    # ...and the OpenAPI document still describes it.
    status, spec = raw(served, "GET", "/v1/openapi.json", None)
    assert status == 200 and "post" in json.loads(spec)["paths"]["/v1/leases"]
