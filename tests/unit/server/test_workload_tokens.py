"""Workload-token verification in-process: JWKS over HTTP on 127.0.0.1 (fetch counts), refetch rate
limit, algorithms, the verified-token cache, pod claims; admin tokens; the denial budget."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from runlease.keys.crypto import Keyring
from runlease.server.admin_tokens import AdminTokens
from runlease.server.auth import DenialBudget
from runlease.server.workload_tokens import AuthenticationError, JwksSource, OidcSettings, WorkloadVerifier
from support.oidc_issuer import TestIssuer, sa_subject


@pytest.fixture()
def issuer(tmp_path: Path) -> TestIssuer:
    return TestIssuer.create(tmp_path)


@pytest.fixture()
def jwks_url(issuer: TestIssuer) -> Iterator[tuple[str, list[int]]]:
    """Serve the issuer's JWKS file on 127.0.0.1; the list counts requests."""
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(1)
            body = issuer.jwks_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/openid/v1/jwks", hits
    finally:
        server.shutdown()
        server.server_close()


def verifier_for(issuer: TestIssuer, jwks: str, **source_options: float) -> WorkloadVerifier:
    settings = OidcSettings(issuer=issuer.issuer, jwks=jwks)
    return WorkloadVerifier(settings, source=JwksSource(jwks, **source_options))


def test_jwks_from_a_url_unknown_kids_refetch_at_most_once_per_interval(issuer, jwks_url) -> None:
    url, hits = jwks_url
    clock = [1000.0]
    verifier = verifier_for(issuer, url, min_refetch_interval=30.0)
    verifier.source._clock = lambda: clock[0]  # the source's own monotonic clock, advanced by hand
    proof = verifier.verify(issuer.token())
    assert proof.subject == sa_subject("ml", "pipeline-a") and proof.method == "oidc" and len(hits) == 1
    # A flood of tokens with made-up key ids: rejected, and at most one refetch per interval.
    for i in range(50):
        with pytest.raises(AuthenticationError, match="does not publish"):
            verifier.verify(issuer.forged_with_other_key(kid=f"made-up-{i}"))
    assert len(hits) == 1  # the first fetch is younger than the interval
    clock[0] += 31
    issuer.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    assert verifier.verify(issuer.token(kid="rsa-2")).subject == sa_subject("ml", "pipeline-a")
    assert len(hits) == 2  # the rotated-in key was found by one refetch


def test_the_verified_token_cache_skips_the_signature_check_until_expiry(issuer) -> None:
    now = [time.time()]
    verifier = WorkloadVerifier(OidcSettings(issuer=issuer.issuer, jwks=str(issuer.jwks_file)),
                                clock=lambda: now[0])
    token = issuer.token(lifetime=600)
    first = verifier.verify(token)
    assert verifier.cached(token) == first
    assert verifier.cached(issuer.token(lifetime=600)) is None  # another token is not in the cache
    now[0] += 601  # past exp (the cache never outlives the token)
    assert verifier.cached(token) is None


def test_algorithms_eddsa_ps256_accepted_declared_alg_mismatch_refused(issuer) -> None:
    issuer.add_key("ed-1", ed25519.Ed25519PrivateKey.generate(), "EdDSA")
    issuer.add_key("ps-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "PS256")
    verifier = verifier_for(issuer, str(issuer.jwks_file))
    assert verifier.verify(issuer.token(kid="ed-1")).subject
    assert verifier.verify(issuer.token(kid="ps-1")).subject
    # rsa-1 declares RS256: a PS256 signature by the same key is refused (no algorithm switching).
    forged = jwt.encode(issuer.claims(), issuer.keys["rsa-1"], algorithm="PS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthenticationError, match="does not match"):
        verifier.verify(forged)
    for bad in (issuer.alg_none(), issuer.hs256_with_public_key()):
        with pytest.raises(AuthenticationError, match="not allowed"):
            verifier.verify(bad)


def test_pod_claims_and_missing_subject(issuer) -> None:
    verifier = verifier_for(issuer, str(issuer.jwks_file))
    proof = verifier.verify(issuer.token("team-b", "trainer"))
    assert proof.claims["namespace"] == "team-b" and proof.claims["serviceaccount"] == "trainer"
    assert proof.claims["node"] == "node-1" and "pod_uid" in proof.claims
    claims = issuer.claims()
    del claims["sub"]
    token = jwt.encode(claims, issuer.keys["rsa-1"], algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthenticationError, match="'sub'"):
        verifier.verify(token)


def test_admin_tokens_are_macs_bound_to_the_kek(tmp_path: Path) -> None:
    from runlease.keys.crypto import new_key

    keyring = Keyring([new_key()])
    tokens = AdminTokens(tmp_path / "server-tokens.json", keyring)
    entry, token = tokens.create("alice")
    assert tokens.check(token) == entry
    assert token not in (tmp_path / "server-tokens.json").read_text()
    assert oct((tmp_path / "server-tokens.json").stat().st_mode & 0o777) == "0o600"
    assert tokens.check(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert tokens.check("rladm_" + "0" * 16 + "_" + "x" * 43) is None
    # The same file under another KEK (someone who wrote it without our key) authenticates nobody.
    assert AdminTokens(tmp_path / "server-tokens.json", Keyring([new_key()])).check(token) is None
    assert tokens.revoke("alice") == 1 and tokens.check(token) is None


def test_denial_budget_folds_a_flood_into_a_count() -> None:
    now = [0.0]
    budget = DenialBudget(rate=1.0, burst=3.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 1.0
    assert budget.take() == 2  # the next written event says two were folded into it


def test_jwks_url_over_tls_with_a_ca_and_a_bearer_token(issuer, tmp_path: Path) -> None:
    """Like the in-cluster API server: https with a private CA, and a bearer token for the fetch."""
    import ssl

    from support.tls import self_signed

    cert, key = self_signed(tmp_path)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            body = issuer.jwks_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/openid/v1/jwks"
        sa_token = tmp_path / "sa-token"
        sa_token.write_text("server-sa-token\n")
        good = WorkloadVerifier(OidcSettings(issuer=issuer.issuer, jwks=url),
                                source=JwksSource(url, ca_file=cert, token_file=sa_token))
        assert good.verify(issuer.token()).subject == sa_subject("ml", "pipeline-a")
        assert seen == ["Bearer server-sa-token"]
        untrusting = WorkloadVerifier(OidcSettings(issuer=issuer.issuer, jwks=url), source=JwksSource(url))
        with pytest.raises(AuthenticationError, match="cannot be read"):
            untrusting.verify(issuer.token())  # no CA: the TLS handshake fails, nothing is trusted
    finally:
        server.shutdown()
        server.server_close()
