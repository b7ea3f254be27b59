"""The broker: the one entry point every adapter (Airflow, KFP, CLI) calls.

``lease`` does, in order: policy check (a denial is audited, then raised),
a read through the rotation-aware cache, the issuer, registration of the
credential with the redactor (before anything else can log it), and the
lease row plus its audit event in one ledger transaction. If recording
fails, a dynamic credential is revoked again so nothing is left minted and
unrecorded.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from pydantic import Secret

from runlease.cache import RotationAwareCache
from runlease.connection import sensitive_strings
from runlease.audit.correlation import correlated
from runlease.errors import (
    AccessDeniedError,
    ConflictError,
    IntegrityError,
    InvalidValueError,
    RevocationIncompleteError,
    RunleaseError,
    SecretNotFoundError,
)
from runlease.issuers import IssuerRegistry
from runlease.ledger.base import Ledger
from runlease.models import (
    AuditEvent,
    Capability,
    Lease,
    LeaseState,
    Outcome,
    RunIdentity,
    SecretPath,
    SecretValue,
    Stage,
    resolve_ref,
    utcnow,
)
from runlease.policy.grants import Policy
from runlease.redact import Redactor, default_redactor
from runlease.integrity.rowauth import RowKeyNotLoadedError, RowTamperedError
from runlease.store.base import SecretStore, StoredSecret
from runlease.store.codec import encode_json


#: Who verifies a presented key when the caller names nobody (a serving process checking its
#: clients outside any run). Policy principal pattern: ``runlease:verify``.
VERIFIER = RunIdentity(orchestrator="runlease", pipeline="verify", principal="runlease:verify")


def new_lease_id() -> str:
    """96 random bits, hex: unique, unguessable, and safe inside role or session names."""
    return "rl" + secrets.token_hex(12)


def secret_strings(value: SecretValue) -> list[str]:
    """The parts of a value that must be masked: a whole string, or a connection's credentials."""
    if isinstance(value, str):
        return [value]
    return sensitive_strings(value)


class Broker:
    def __init__(
        self,
        store: SecretStore,
        ledger: Ledger,
        *,
        policy: Policy | None = None,
        issuers: IssuerRegistry | None = None,
        redactor: Redactor | None = None,
        default_env: str = "dev",
        default_ttl: timedelta = timedelta(hours=1),
        max_ttl: timedelta = timedelta(hours=12),
        clock: Callable[[], datetime] = utcnow,
        max_value_bytes: int = 1 << 20,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.policy = policy or Policy.allow_all()
        self.issuers = issuers or IssuerRegistry()
        self.redactor = redactor if redactor is not None else default_redactor()
        self.default_env = default_env
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.clock = clock
        self.max_value_bytes = max_value_bytes
        self.cache = RotationAwareCache(store)

    # -- helpers --------------------------------------------------------------

    def path(self, ref: str | SecretPath, kind: str = "connections") -> SecretPath:
        return ref if isinstance(ref, SecretPath) else resolve_ref(ref, self.default_env, kind)

    def authorize(self, identity: RunIdentity, path: SecretPath, capability: Capability, action: str) -> None:
        """Raise (after auditing the denial) unless policy grants ``capability`` on ``path``."""
        if self.policy.allows(identity, path, capability):
            return
        self.ledger.append(
            AuditEvent.for_identity(
                identity, action=action, outcome=Outcome.DENIED, path=str(path),
                detail={"capability": capability.value, "policy": self.policy.source},
            )
        )
        raise AccessDeniedError(f"{identity.subject} is not granted {capability.value!r} on {path}")

    def _ttl(self, ttl: timedelta | float | int | None) -> timedelta:
        if ttl is None:
            return self.default_ttl
        if not isinstance(ttl, timedelta):
            try:
                seconds = float(ttl)
            except (TypeError, ValueError):
                raise InvalidValueError(f"lease TTL must be a number of seconds, got {type(ttl).__name__}") from None
            if seconds != seconds:  # NaN
                raise InvalidValueError("lease TTL must be a number of seconds, got NaN")
            if seconds <= 0:
                raise InvalidValueError("lease TTL must be positive")
            if seconds > self.max_ttl.total_seconds():
                return self.max_ttl  # also covers values too large for timedelta (inf, 1e30)
            ttl = timedelta(seconds=seconds)
        if ttl <= timedelta(0):
            raise InvalidValueError("lease TTL must be positive")
        return min(ttl, self.max_ttl)

    def mask(self, value: SecretValue) -> None:
        self.redactor.add_many(secret_strings(value))

    def report_tampering(self, err: IntegrityError | RowKeyNotLoadedError, action: str,
                         identity: RunIdentity | None, **fields: Any) -> None:
        """Audit a row that failed authentication (names the table and row, never a value), once:
        the error is marked ``audited`` so an adapter that also catches it does not audit it again."""
        if getattr(err, "audited", False):
            return
        err.audited = True  # type: ignore[union-attr]
        self.ledger.append(AuditEvent.for_identity(
            identity, action=action, outcome=Outcome.ERROR, **fields,
            detail={"error": type(err).__name__, "table": getattr(err, "table", None),
                    "row": getattr(err, "row_id", None)},
        ))

    @contextmanager
    def _tampering_audited(self, action: str, identity: RunIdentity | None, **fields: Any) -> Iterator[None]:
        """Audit, then re-raise, an authentication failure of a stored row (store or ledger)."""
        try:
            yield
        except (IntegrityError, RowKeyNotLoadedError) as err:
            self.report_tampering(err, action, identity, **fields)
            raise

    # -- leases ---------------------------------------------------------------

    @correlated
    def lease(
        self,
        ref: str | SecretPath,
        identity: RunIdentity,
        ttl: timedelta | float | int | None = None,
        *,
        kind: str = "connections",
        stage: Stage = Stage.CURRENT,
        detail: dict[str, Any] | None = None,
        fetched: StoredSecret | None = None,
    ) -> Lease:
        """Hand ``identity`` a credential for ``ref`` (a path, or an ID in the default env).

        ``detail`` adds small non-secret facts to the audit event (an adapter's
        phase, e.g. Airflow's template rendering vs. execute); the broker's own
        keys win over the caller's. ``fetched``: what the adapter just read
        through :attr:`cache` for this path and stage (to check it exists and is
        well-formed before leasing), so a remote store is not asked twice.
        """
        path = self.path(ref, kind)
        self.authorize(identity, path, Capability.LEASE, "lease")
        duration = self._ttl(ttl)
        with self._tampering_audited("lease", identity, path=str(path)):
            secret = self._fetched(path, fetched) or self.cache.get(path, stage)
        issuer_name = str(secret.metadata.get("issuer", "static"))
        issuer = self.issuers.get(issuer_name)
        lease_id = new_lease_id()
        try:
            issued = issuer.issue(secret, identity, lease_id, duration)
        except Exception as err:
            # A refused issuance (STS AssumeRole denied, a database down) is part of the trail too.
            try:
                self.ledger.append(AuditEvent.for_identity(
                    identity, action="lease", outcome=Outcome.ERROR, path=str(path), version=secret.version,
                    lease_id=lease_id, detail={**(detail or {}), "issuer": issuer_name, "stage": stage.value,
                                               "error": type(err).__name__},
                ))
            except RunleaseError:
                pass  # the ledger itself failed: report the issuer's error
            raise
        self.mask(issued.value)
        now = self.clock()
        expires = now + duration
        if issued.expires_at is not None and issued.expires_at < expires:
            expires = issued.expires_at
        lease = Lease(
            lease_id=lease_id, path=path, version=secret.version, stage=stage, identity=identity,
            issuer=issuer_name, issued_at=now, expires_at=expires, issuer_state=issued.state,
            credential=Secret(issued.value),
        )
        event = AuditEvent.for_identity(
            identity, ts=now, action="lease", path=str(path), version=secret.version, lease_id=lease_id,
            detail={**(detail or {}), "issuer": issuer_name, "stage": stage.value,
                    "ttl_s": int(duration.total_seconds()), "expires_at": expires.isoformat()},
        )
        try:
            self.ledger.record_lease(lease, event)
        except BaseException:
            issuer.revoke(lease)
            raise
        return lease

    @staticmethod
    def _fetched(path: SecretPath, fetched: StoredSecret | None) -> StoredSecret | None:
        if fetched is not None and fetched.path != path:
            raise InvalidValueError(f"a value read for {fetched.path} was passed for {path}")
        return fetched

    def _close(self, lease: Lease, new_state: LeaseState, reason: str,
               actor: RunIdentity | None) -> bool:
        """Revoke in the issuer, then mark the lease closed with an event.

        The event carries the *lease's* run/task/try (so a run's trail shows
        its revocations) and the *actor* as principal (who closed it).
        """
        action = "revoke" if new_state is LeaseState.REVOKED else "expire"
        fields: dict[str, Any] = dict(path=str(lease.path), version=lease.version, lease_id=lease.lease_id)
        if actor is not None:
            fields["principal"] = actor.principal or actor.subject
        else:
            fields["principal"] = "runlease:ttl" if new_state is LeaseState.EXPIRED else None
        if fields["principal"] is None:
            del fields["principal"]
        try:
            self.issuers.get(lease.issuer).revoke(lease)
        except Exception as err:
            self.ledger.append(AuditEvent.for_identity(
                lease.identity, action=action, outcome=Outcome.ERROR, **fields,
                detail={"reason": reason, "error": type(err).__name__},
            ))
            raise
        event = AuditEvent.for_identity(lease.identity, action=action, **fields, detail={"reason": reason})
        return self.ledger.close_lease(lease.lease_id, new_state, reason, self.clock(), event)

    def revoke(self, lease_id: str, reason: str = "revoked", identity: RunIdentity | None = None) -> bool:
        """End one lease; False if it was already revoked or expired (revoking is idempotent).

        Not policy-checked: revoking only ever takes access away.
        """
        with self._tampering_audited("revoke", identity, lease_id=lease_id):
            lease = self.ledger.get_lease(lease_id)
        if lease.state is not LeaseState.ACTIVE:
            return False
        return self._close(lease, LeaseState.REVOKED, reason, identity)

    def revoke_where(self, reason: str, identity: RunIdentity | None = None, **filters: Any) -> int:
        """Revoke every active lease matching ledger filters (pipeline, run_id, task_id, try_number,
        map_index), going on past issuers that fail and rows that fail authentication
        (see :meth:`_close_found`)."""
        return self._close_found(dict(state=LeaseState.ACTIVE, **filters), LeaseState.REVOKED, reason, identity)

    def _close_found(self, filters: dict[str, Any], new_state: LeaseState, reason: str,
                     actor: RunIdentity | None) -> int:
        """Close every lease the ledger finds, going on past an issuer that fails (its error is
        audited by :meth:`_close`) and past rows that fail authentication (each audited, never
        acted on). Raises at the end: :class:`IntegrityError` if any row was forged or edited,
        else :class:`RevocationIncompleteError` if an issuer failed."""
        tampered: list[str] = []
        leases = self.ledger.find_leases(tampered=tampered, **filters)
        action = "revoke" if new_state is LeaseState.REVOKED else "expire"
        for lease_id in tampered:
            self.report_tampering(RowTamperedError("leases", lease_id), action, actor, lease_id=lease_id)
        count, failed = 0, []
        for lease in leases:
            try:
                count += self._close(lease, new_state, reason, actor)
            except Exception:  # noqa: BLE001 - audited in _close; the others must still be closed
                failed.append(lease.lease_id)
        if tampered:
            raise IntegrityError(
                f"closed {count} lease(s); {len(tampered)} lease row(s) failed authentication and were not acted on "
                f"(audited): {', '.join(tampered)}" + (f"; {len(failed)} could not be revoked: {', '.join(failed)}"
                                                       if failed else ""))
        if failed:
            raise RevocationIncompleteError(count, failed)
        return count

    def revoke_run(self, run_id: str, reason: str = "run ended", identity: RunIdentity | None = None, *,
                   pipeline: str | None = None) -> int:
        """Revoke a run's active leases. Pass ``pipeline``: Airflow run ids (``manual__<date>``)
        repeat across DAGs, so a run id alone can name other pipelines' runs too."""
        return self.revoke_where(reason, identity, pipeline=pipeline, run_id=run_id)

    def revoke_task(self, run_id: str, task_id: str, try_number: int | None = None,
                    map_index: int | None = None, reason: str = "task ended",
                    identity: RunIdentity | None = None, *, pipeline: str | None = None) -> int:
        return self.revoke_where(reason, identity, pipeline=pipeline, run_id=run_id, task_id=task_id,
                                 try_number=try_number, map_index=map_index)

    def renew(self, lease_id: str, ttl: timedelta | float | int | None = None,
              identity: RunIdentity | None = None) -> Lease:
        """Extend an active lease for a long task, if its issuer can (postgres, vault-database).

        Policy is checked again (renewing extends access), the new expiry
        never passes ``issued_at + max_ttl``, and it is what the issuer
        actually granted (Vault may give less than asked). Returns the lease
        with its new ``expires_at``.
        """
        with self._tampering_audited("renew", identity, lease_id=lease_id):
            lease = self.ledger.get_lease(lease_id)
        now = self.clock()
        if lease.state is not LeaseState.ACTIVE or lease.expires_at <= now:
            state = lease.state.value if lease.state is not LeaseState.ACTIVE else "past its expiry"
            raise InvalidValueError(f"lease {lease_id} is {state}; only an active lease can be renewed")
        issuer = self.issuers.get(lease.issuer)
        renew = getattr(issuer, "renew", None)
        if renew is None:
            raise InvalidValueError(f"issuer {lease.issuer!r} cannot renew a credential; lease a new one instead")
        # A verified actor (runlease serve's caller, who owns the lease) is checked as itself: the
        # ledger's copy of the identity carries no proof, so ``workloads`` grants could not match it.
        verified_actor = identity is not None and identity.verification is not None
        self.authorize(identity if verified_actor else lease.identity, lease.path, Capability.LEASE, "renew")
        duration = min(self._ttl(ttl), lease.issued_at + self.max_ttl - now)
        if duration <= timedelta(0):
            raise InvalidValueError(f"lease {lease_id} has reached the maximum TTL; lease a new credential")
        fields: dict[str, Any] = dict(path=str(lease.path), version=lease.version, lease_id=lease_id)
        if identity is not None:
            fields["principal"] = identity.principal or identity.subject
        try:
            granted = renew(lease, duration)
        except Exception as err:
            self.ledger.append(AuditEvent.for_identity(
                lease.identity, action="renew", outcome=Outcome.ERROR, **fields,
                detail={"error": type(err).__name__},
            ))
            raise
        # The issuer's own expiry wins when it is sooner (Vault may grant less); the clock is
        # read again so a granted expiry computed during the call is never shaved by microseconds.
        expires = min(granted, self.clock() + duration)
        event = AuditEvent.for_identity(
            lease.identity, action="renew", **fields,
            detail={"ttl_s": int(duration.total_seconds()), "expires_at": expires.isoformat()},
        )
        if not self.ledger.extend_lease(lease_id, expires, event):
            raise InvalidValueError(f"lease {lease_id} was closed while it was being renewed")
        return lease.model_copy(update={"expires_at": expires})

    def sweep_expired(self, now: datetime | None = None) -> int:
        """The TTL backstop: close every active lease past its expiry (e.g. of a SIGKILLed task)."""
        return self._close_found(dict(state=LeaseState.ACTIVE, expired_before=now or self.clock()),
                                 LeaseState.EXPIRED, "ttl expired", None)

    # -- reads and writes -----------------------------------------------------

    @correlated
    def read(self, ref: str | SecretPath, identity: RunIdentity, *, kind: str = "connections",
             version: int | None = None, stage: Stage = Stage.CURRENT, revealed: bool = False,
             detail: dict[str, Any] | None = None, fetched: StoredSecret | None = None) -> StoredSecret:
        """Read a value without a lease (CLI ``get``); audited, and masked from here on.

        ``detail`` adds non-secret facts to the audit event, ``fetched`` saves a
        second store round trip, both as for :meth:`lease`.
        """
        path = self.path(ref, kind)
        self.authorize(identity, path, Capability.READ, "read")
        with self._tampering_audited("read", identity, path=str(path)):
            secret = (self._fetched(path, fetched) if version is None else None) or self.cache.get(path, stage, version)
        self.mask(secret.value)
        self.ledger.append(AuditEvent.for_identity(
            identity, action="read", path=str(path), version=secret.version,
            detail={**(detail or {}), "revealed": revealed},
        ))
        return secret

    @correlated
    def verify_presented_key(self, ref: str | SecretPath, presented: str, identity: RunIdentity | None = None, *,
                             kind: str = "tokens") -> bool:
        """True if ``presented`` equals the CURRENT or the PREVIOUS version of a stored key.

        Why PREVIOUS too: a rotation finishes by making the new key CURRENT
        while clients still hold the old one; until the rotation retires it
        (after the grace period) the old key must keep working, or every
        client breaks the moment the rotation finishes. Both stages are
        always compared with :func:`hmac.compare_digest` (no early exit), so
        timing tells a caller nothing about which one matched or how much of
        a guess was right. Audited as ``verify`` with the matching stage
        (outcome ``denied`` when none matched) -- never the presented key.
        Policy: ``read`` on the path (for ``identity``, default :data:`VERIFIER`).
        """
        path = self.path(ref, kind)
        who = identity or VERIFIER
        self.authorize(who, path, Capability.READ, "verify")
        candidate = presented.encode() if isinstance(presented, str) else b""
        matched: Stage | None = None
        version: int | None = None
        for stage in (Stage.CURRENT, Stage.PREVIOUS):
            try:
                with self._tampering_audited("verify", who, path=str(path)):
                    stored = self.cache.get(path, stage)
            except SecretNotFoundError:
                if stage is Stage.CURRENT:
                    raise
                continue
            self.mask(stored.value)
            equal = isinstance(stored.value, str) and hmac.compare_digest(stored.value.encode(), candidate)
            if equal and matched is None:
                matched, version = stage, stored.version
        self.ledger.append(AuditEvent.for_identity(
            who, action="verify", path=str(path), version=version,
            outcome=Outcome.OK if matched else Outcome.DENIED,
            detail={"matched": matched.value if matched else None},
        ))
        return matched is not None

    @correlated
    def put(self, ref: str | SecretPath, value: SecretValue, identity: RunIdentity, *, kind: str = "connections",
            cas: int | None = None, stage: Stage = Stage.CURRENT, metadata: dict[str, Any] | None = None) -> int:
        """Write a new version; the write and its audit event commit together on the local store.

        ``metadata`` (issuer settings) must apply to the new version from the
        moment it is readable: a store that can (``put_takes_metadata``, AWS)
        does it inside the put; otherwise it is written in the same ledger
        transaction. A failed write (other than refused input or a lost
        check-and-set) is audited with outcome error: a remote store may have
        done part of it.
        """
        path = self.path(ref, kind)
        self.authorize(identity, path, Capability.ADMIN, "write")
        size = len(encode_json(path, value).encode())
        if size > self.max_value_bytes:
            raise InvalidValueError(f"value for {path} is {size} bytes, more than the limit of {self.max_value_bytes} "
                                    "(RUNLEASE_MAX_VALUE_BYTES); nothing was written")
        detail: dict[str, Any] = {"stage": stage.value, "cas": cas}
        if metadata:
            detail["metadata_keys"] = sorted(metadata)
        try:
            with self.ledger.atomic():
                if metadata and getattr(self.store, "put_takes_metadata", False):
                    version = self.store.put(path, value, cas=cas, stage=stage, metadata=metadata)  # type: ignore[call-arg]
                else:
                    version = self.store.put(path, value, cas=cas, stage=stage)
                    if metadata:
                        self.store.update_metadata(path, metadata)
                self.ledger.append(AuditEvent.for_identity(
                    identity, action="write", path=str(path), version=version, detail=detail,
                ))
        except (InvalidValueError, ConflictError):
            raise  # bad input, a lost check-and-set: by contract nothing readable was written
        except RunleaseError as err:
            try:
                self.ledger.append(AuditEvent.for_identity(
                    identity, action="write", path=str(path), outcome=Outcome.ERROR,
                    detail={**detail, "error": type(err).__name__, "message": str(err)[:500]},
                ))
            except RunleaseError:
                pass  # the ledger itself failed: the original error is the one to report
            raise
        return version

    @correlated
    def delete(self, ref: str | SecretPath, identity: RunIdentity, *, kind: str = "connections") -> None:
        path = self.path(ref, kind)
        self.authorize(identity, path, Capability.ADMIN, "delete")
        with self.ledger.atomic():
            self.store.delete(path)
            self.ledger.append(AuditEvent.for_identity(identity, action="delete", path=str(path)))
        self.cache.forget(path)

    @correlated
    def move_stage(self, ref: str | SecretPath, stage: Stage, version: int | None, identity: RunIdentity, *,
                   expected: int | None = None, kind: str = "connections") -> None:
        path = self.path(ref, kind)
        self.authorize(identity, path, Capability.ROTATE, "stage")
        with self.ledger.atomic():
            self.store.move_stage(path, stage, version, expected=expected)
            self.ledger.append(AuditEvent.for_identity(
                identity, action="stage", path=str(path), version=version,
                detail={"stage": stage.value, "expected": expected},
            ))
