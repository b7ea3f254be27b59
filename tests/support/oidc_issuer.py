"""A test OIDC issuer shaped like a Kubernetes cluster's service-account issuer.

Keys are generated per test (RSA 2048 and EC P-256), the JWKS is written to
a file the server reads (``--oidc-jwks FILE``), and tokens carry the claims
of a projected service-account token: ``iss``, ``sub =
system:serviceaccount:<ns>:<sa>``, ``aud``, ``exp``/``iat``/``nbf`` and the
``kubernetes.io`` block (namespace, pod, service account, node).
Attack helpers mint what an attacker would try: another key, ``alg: none``,
HS256 keyed with the public key, wrong audience or issuer, expired.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "runlease"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sa_subject(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


@dataclass
class TestIssuer:
    __test__ = False  # a helper, not a test class (pytest collects Test* names)

    jwks_file: Path
    issuer: str = ISSUER
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    algs: dict[str, str] = field(default_factory=dict)  # kid -> alg

    @classmethod
    def create(cls, directory: Path) -> "TestIssuer":
        issuer = cls(jwks_file=directory / "jwks.json")
        issuer.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        issuer.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")
        return issuer

    def add_key(self, kid: str, key: Any, alg: str) -> None:
        self.keys[kid], self.algs[kid] = key, alg
        self.write_jwks()

    def remove_key(self, kid: str) -> None:
        del self.keys[kid], self.algs[kid]
        self.write_jwks()

    def write_jwks(self) -> None:
        entries = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[self.algs[kid]].to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg=self.algs[kid])
            entries.append(jwk)
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": entries}))
        tmp.replace(self.jwks_file)

    def claims(self, namespace: str = "ml", account: str = "pipeline-a", *, audience: str | list[str] = AUDIENCE,
               lifetime: int = 600, issued_ago: int = 0, issuer: str | None = None, **extra: Any) -> dict[str, Any]:
        now = int(time.time()) - issued_ago
        pod = f"{account}-pod-{uuid.uuid4().hex[:5]}"
        return {
            "iss": issuer or self.issuer, "sub": sa_subject(namespace, account), "aud": audience,
            "iat": now, "nbf": now, "exp": now + lifetime,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": pod, "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
            },
            **extra,
        }

    def token(self, namespace: str = "ml", account: str = "pipeline-a", *, kid: str = "rsa-1",
              **claims: Any) -> str:
        return jwt.encode(self.claims(namespace, account, **claims), self.keys[kid], algorithm=self.algs[kid],
                          headers={"kid": kid})

    # -- what an attacker mints ----------------------------------------------------------

    def forged_with_other_key(self, namespace: str = "ml", account: str = "pipeline-a", kid: str = "rsa-1") -> str:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(self.claims(namespace, account), other, algorithm="RS256", headers={"kid": kid})

    def alg_none(self, namespace: str = "ml", account: str = "pipeline-a") -> str:
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        body = _b64(json.dumps(self.claims(namespace, account)).encode())
        return f"{header}.{body}."

    def hs256_with_public_key(self, namespace: str = "ml", account: str = "pipeline-a") -> str:
        """The classic key-confusion forgery: HMAC keyed with the issuer's *public* key (PEM)."""
        import hashlib
        import hmac

        pem = self.keys["rsa-1"].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        body = _b64(json.dumps(self.claims(namespace, account)).encode())
        signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def write_token(self, path: Path, token: str) -> Path:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(token)
        tmp.replace(path)
        return path
