"""Verify a workload's OIDC token (e.g. a Kubernetes projected service-account token).

Why OIDC: a pod cannot be trusted to say which pipeline it runs for, but
the kubelet hands it a short-lived JWT signed by the cluster's service
account issuer, naming the pod's namespace, service account and pod. Checking
that signature against the issuer's published keys (JWKS) proves the
workload's identity without any secret in the pod.

Checks, all with PyJWT over ``cryptography`` (no hand-written crypto):

* the header's ``alg`` is an asymmetric algorithm (RSA, RSA-PSS, ECDSA,
  EdDSA): ``none`` and every ``HS*`` are refused before a key is looked up,
  so "HS256 signed with the public key" cannot work;
* the signing key is found by ``kid`` in the JWKS (file or URL, cached; an
  unknown ``kid`` triggers one refetch, rate-limited, for key rotation), and
  a key that names its own ``alg`` must match the header;
* ``iss``, ``aud``, ``exp`` and ``nbf`` (small leeway for clock skew) and a
  ``sub`` are required.

The result is a :class:`~runlease.models.Verification` (method ``oidc``):
the subject is the token's ``sub`` (``system:serviceaccount:<ns>:<sa>``),
and the pod claims (``kubernetes.io``: namespace, pod, service account) are
recorded beside it. Verified tokens are cached by digest until shortly
before they expire, so a client sending the same token on every request
pays for one signature check, not one per request.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK

from runlease.errors import RunleaseError
from runlease.models import Verification

#: Signature algorithms a workload token may use: public-key ones only.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
DEFAULT_AUDIENCE = "runlease"
DEFAULT_LEEWAY_S = 30
#: Shortest gap between two JWKS fetches triggered by unknown key ids (a flood of
#: tokens with random ``kid`` must not turn into a flood of fetches).
MIN_REFETCH_INTERVAL_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0
#: Oldest a fetched key set may be before it is fetched again on use (removed keys expire).
JWKS_MAX_AGE_S = 300.0
_CACHE_SIZE = 10_000
_CACHE_MAX_S = 300.0


class AuthenticationError(RunleaseError, PermissionError):
    """The request carries no valid credential (HTTP 401). ``reason`` is safe to show and audit:
    it never contains the token."""

    exit_code = 6

    def __init__(self, reason: str, claimed_subject: str | None = None) -> None:
        super().__init__(f"not authenticated: {reason}")
        self.reason = reason
        self.claimed_subject = claimed_subject


class JwksSource:
    """The issuer's public keys, from a file or an ``http(s)`` URL, cached by ``kid``.

    A file is re-read like a URL is refetched (a ConfigMap the operator updates
    when the cluster rotates its signing key).
    """

    def __init__(self, location: str, *, min_refetch_interval: float = MIN_REFETCH_INTERVAL_S,
                 max_age: float = JWKS_MAX_AGE_S, ca_file: Path | None = None, token_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.location = location
        #: CA bundle for an https JWKS URL (the in-cluster API server's ``ca.crt``).
        self.ca_file = ca_file
        #: Bearer token sent when fetching (an API server that does not serve the JWKS anonymously).
        self.token_file = token_file
        self.min_refetch_interval = min_refetch_interval
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, tuple[PyJWK, str | None]] = {}
        self._fetched_at: float | None = None
        self.fetches = 0

    def _read(self) -> dict[str, Any]:
        if self.location.startswith(("http://", "https://")):
            request = urllib.request.Request(self.location, headers={"Accept": "application/json"})
            if self.token_file is not None:
                request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
            context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
            with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT_S, context=context) as response:  # noqa: S310
                return json.loads(response.read())
        path = Path(self.location.removeprefix("file://"))
        return json.loads(path.read_text())

    def refresh(self) -> None:
        """Fetch the key set now. Keys that cannot be used for an asymmetric signature are skipped."""
        try:
            doc = self._read()
        except (OSError, ValueError) as err:
            raise AuthenticationError(f"the issuer's key set ({self.location}) cannot be read: "
                                      f"{type(err).__name__}") from None
        keys: dict[str | None, tuple[PyJWK, str | None]] = {}
        for entry in doc.get("keys", []) if isinstance(doc, dict) else []:
            if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            declared = entry.get("alg") if isinstance(entry.get("alg"), str) else None
            if declared is not None and declared not in ASYMMETRIC_ALGORITHMS:
                continue
            try:
                jwk = PyJWK(entry)
            except jwt.exceptions.PyJWTError:
                continue
            keys[entry.get("kid")] = (jwk, declared)
        self._keys = keys
        self._fetched_at = self._clock()
        self.fetches += 1

    def key(self, kid: str | None) -> tuple[PyJWK, str | None]:
        """The key for ``kid`` and the ``alg`` it declares; refetches once (at most every ``min_refetch_interval``) when unknown."""
        with self._lock:
            if self._fetched_at is None:
                self.refresh()
            age = self._clock() - (self._fetched_at or 0.0)
            if age >= self.max_age:
                self.refresh()  # a key the issuer stopped publishing must stop working, even if cached
                age = 0.0
            found = self._find(kid)
            if found is None and age >= self.min_refetch_interval:
                self.refresh()
                found = self._find(kid)
        if found is None:
            raise AuthenticationError("token signed by a key the issuer does not publish")
        return found

    def _find(self, kid: str | None) -> tuple[PyJWK, str | None] | None:
        if kid is not None:
            return self._keys.get(kid)
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    jwks: str
    audience: str = DEFAULT_AUDIENCE
    leeway_s: int = DEFAULT_LEEWAY_S


def pod_claims(claims: dict[str, Any]) -> dict[str, str]:
    """The non-secret Kubernetes facts of a projected token worth auditing."""
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, dict):
        return {}
    out: dict[str, str] = {}
    if isinstance(k8s.get("namespace"), str):
        out["namespace"] = k8s["namespace"]
    for part in ("pod", "serviceaccount", "node"):
        entry = k8s.get(part)
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out[part] = entry["name"][:253]
            if isinstance(entry.get("uid"), str):
                out[f"{part}_uid"] = entry["uid"][:64]
    return out


class WorkloadVerifier:
    """Turn a bearer JWT into a :class:`Verification`, or raise :class:`AuthenticationError`."""

    def __init__(self, settings: OidcSettings, *, source: JwksSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.source = source or JwksSource(settings.jwks)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[float, Verification]] = OrderedDict()

    def cached(self, token: str) -> Verification | None:
        """The verification of a token this verifier already accepted and that has not expired, else None.

        Pure CPU (a digest and a dict lookup): the server calls it on the event loop and
        only sends a cache miss (signature check, maybe a JWKS fetch) to a worker thread.
        """
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            hit = self._cache.get(digest)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def verify(self, token: str) -> Verification:
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None and hit[0] > now:
                return hit[1]
        verification, expires = self._verify(token)
        with self._lock:
            self._cache[digest] = (min(expires, now + _CACHE_MAX_S), verification)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return verification

    def _verify(self, token: str) -> tuple[Verification, float]:
        claimed = _unverified_subject(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.DecodeError:
            raise AuthenticationError("malformed token") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthenticationError(f"token algorithm {str(alg)[:16]!r} is not allowed "
                                      "(asymmetric signatures only)", claimed)
        kid = header.get("kid")
        try:
            jwk, key_alg = self.source.key(kid if isinstance(kid, str) else None)
        except AuthenticationError as err:
            raise AuthenticationError(err.reason, claimed) from None
        if key_alg is not None and key_alg != alg:
            raise AuthenticationError(f"token algorithm {alg} does not match its key's ({key_alg})", claimed)
        s = self.settings
        try:
            claims = jwt.decode(
                token, jwk.key, algorithms=[alg], audience=s.audience, issuer=s.issuer, leeway=s.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.exceptions.ExpiredSignatureError:
            raise AuthenticationError("token expired", claimed) from None
        except jwt.exceptions.ImmatureSignatureError:
            raise AuthenticationError("token not yet valid (nbf/iat in the future)", claimed) from None
        except jwt.exceptions.InvalidAudienceError:
            raise AuthenticationError(f"token audience is not {s.audience!r}", claimed) from None
        except jwt.exceptions.InvalidIssuerError:
            raise AuthenticationError("token issuer is not the configured issuer", claimed) from None
        except jwt.exceptions.MissingRequiredClaimError as err:
            raise AuthenticationError(f"token lacks the {err.claim!r} claim", claimed) from None
        except jwt.exceptions.InvalidSignatureError:
            raise AuthenticationError("token signature does not verify", claimed) from None
        except (jwt.exceptions.InvalidTokenError, jwt.exceptions.PyJWKError, ValueError, TypeError) as err:
            raise AuthenticationError(f"invalid token ({type(err).__name__})", claimed) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 512:
            raise AuthenticationError("token subject is empty or too long", claimed)
        verification = Verification(method="oidc", subject=subject, issuer=s.issuer, fields=(),
                                    claims=pod_claims(claims))
        return verification, float(claims["exp"])


def _unverified_subject(token: str) -> str | None:
    """The ``sub`` a rejected token claims, for the denial's audit event (marked as a claim there)."""
    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.exceptions.PyJWTError:
        return None
    return sub[:256] if isinstance(sub, str) else None
