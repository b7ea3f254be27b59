"""Who is calling ``runlease serve``: a verified workload (OIDC token) or an operator (admin token).

The bearer token decides, nothing else: a run id, pipeline or principal in
the request body is a *claim*, recorded as such, and never changes who the
caller is. Failed authentication is audited (``authenticate``/``denied``,
with the reason and the subject the token claimed, marked as a claim) and
answered 401 with no detail an attacker could use. Denial events are rate
limited so a flood of garbage tokens cannot flood the ledger: past the
budget they are counted and the next written event says how many were
folded into it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runlease.ledger.base import Ledger
from runlease.models import IDENTITY_FIELDS, AuditEvent, Outcome, RunIdentity, Verification
from runlease.server.admin_tokens import PREFIX as ADMIN_PREFIX
from runlease.server.admin_tokens import AdminTokens
from runlease.server.workload_tokens import AuthenticationError, WorkloadVerifier

ADMIN_METHOD = "admin-token"
#: RunIdentity fields a request may claim (never ``principal`` or ``verification``).
CLAIMABLE = frozenset(IDENTITY_FIELDS)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``verification.subject`` is what ownership and policy rest on."""

    verification: Verification

    @property
    def is_admin(self) -> bool:
        return self.verification.method == ADMIN_METHOD

    @property
    def subject(self) -> str:
        return self.verification.subject

    @property
    def principal(self) -> str:
        return self.subject

    def identity(self, claims: dict[str, Any] | None = None) -> RunIdentity:
        """The identity a broker call runs as: the claimed run/task, the verified principal.

        Whatever ``principal`` the body claims is dropped: the principal is the
        verified subject (leases are owned by it, policy ``workloads`` match it).
        """
        fields = {k: v for k, v in (claims or {}).items() if v is not None and k in CLAIMABLE}
        fields.setdefault("orchestrator", "cli" if self.is_admin else "workload")
        fields.setdefault("pipeline", (self.subject.removeprefix("admin:") if self.is_admin else self.subject)[:250])
        return RunIdentity(**fields, principal=self.principal, verification=self.verification)


class DenialBudget:
    """Token bucket for audited authentication failures (``rate`` per second, ``burst`` at once)."""

    def __init__(self, rate: float = 20.0, burst: float = 100.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._at = clock()
        self._lock = threading.Lock()
        self.suppressed = 0

    def take(self) -> int | None:
        """None when over budget (the failure is only counted), else how many were folded into this one."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1:
                self.suppressed += 1
                return None
            self._tokens -= 1
            folded, self.suppressed = self.suppressed, 0
            return folded


class Authenticator:
    def __init__(self, ledger: Ledger, verifier: WorkloadVerifier | None, admin_tokens: AdminTokens | None,
                 budget: DenialBudget | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.ledger = ledger
        self.verifier = verifier
        self.admin_tokens = admin_tokens
        self.budget = budget or DenialBudget()
        self.on_failure = on_failure

    def cached(self, authorization: str | None) -> Caller | None:
        """The caller behind an already verified workload token, without blocking; None otherwise."""
        if self.verifier is None or not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        if token.startswith(ADMIN_PREFIX):
            return None
        verification = self.verifier.cached(token)
        return Caller(verification) if verification is not None else None

    def authenticate(self, authorization: str | None, route: str) -> Caller:
        """The caller behind an ``Authorization`` header, or :class:`AuthenticationError` (audited)."""
        method = "oidc"
        try:
            token = _bearer(authorization)
            if token.startswith(ADMIN_PREFIX):
                method = ADMIN_METHOD
                return self._admin(token)
            if self.verifier is None:
                raise AuthenticationError("this server accepts no workload tokens (no --oidc-issuer configured)")
            return Caller(self.verifier.verify(token))
        except AuthenticationError as err:
            self._audit_failure(err, method, route)
            raise

    def _admin(self, token: str) -> Caller:
        entry = self.admin_tokens.check(token) if self.admin_tokens is not None else None
        if entry is None:
            raise AuthenticationError("unknown or revoked admin token")
        return Caller(Verification(method=ADMIN_METHOD, subject=f"admin:{entry.name}",
                                   claims={"token_id": entry.token_id}))

    def _audit_failure(self, err: AuthenticationError, method: str, route: str) -> None:
        if self.on_failure is not None:
            self.on_failure(err.reason)
        folded = self.budget.take()
        if folded is None:
            return
        detail: dict[str, Any] = {"reason": err.reason, "method": method, "route": route}
        if err.claimed_subject:
            detail["claimed_subject"] = err.claimed_subject
        if folded:
            detail["suppressed_before"] = folded
        self.ledger.append(AuditEvent(action="authenticate", outcome=Outcome.DENIED, principal="unauthenticated",
                                      detail=detail))


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("no bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the Authorization header is not 'Bearer <token>'")
    if len(token) > 16_384:
        raise AuthenticationError("token too long")
    return token
