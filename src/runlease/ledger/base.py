"""The Ledger protocol: leases plus the hash-chained audit log, written atomically.

Separate from the SecretStore because the two scale differently: values can
live in Vault or AWS while leases and audit must be shared by every worker
that revokes at run end (one machine: SQLite; many: PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Protocol

from pydantic import BaseModel

from runlease.audit.chain import VerifyResult
from runlease.models import AuditEvent, Lease, LeaseState, RunIdentity, SecretPath, Stage
from runlease.integrity.rowauth import RowAuthenticator, RowKeyNotLoadedError, RowTamperedError, VerifiedRows


class AuditQuery(BaseModel):
    """Filters for ``audit show`` / ``export``; every field is optional and ANDed."""

    run_id: str | None = None
    path: str | None = None
    principal: str | None = None
    action: str | None = None
    after_seq: int = 0
    limit: int | None = None


#: Lease columns in storage order: both ledgers create, insert and select them in this order.
LEASE_FIELDS: tuple[str, ...] = (
    "lease_id", "path", "version", "stage", "issuer", "orchestrator", "pipeline", "run_id", "task_id",
    "try_number", "map_index", "principal", "issued_at", "expires_at", "state", "revoked_at",
    "revoke_reason", "issuer_state",
)
_STATE = LEASE_FIELDS.index("state")


def lease_values(lease: Lease, stored_time: Callable[[datetime], Any], stored_json: Callable[[dict[str, Any]], Any]
                 ) -> tuple[Any, ...]:
    """A new lease's row, in :data:`LEASE_FIELDS` order (it is active, so never revoked yet)."""
    i = lease.identity
    return (
        lease.lease_id, str(lease.path), lease.version, lease.stage.value if lease.stage else None,
        lease.issuer, i.orchestrator, i.pipeline, i.run_id, i.task_id, i.try_number, i.map_index,
        i.principal, stored_time(lease.issued_at), stored_time(lease.expires_at), lease.state.value, None, None,
        stored_json(lease.issuer_state),
    )


def _utc(value: datetime | str | None) -> datetime | None:
    """Stored times as UTC datetimes, whether the backend returns ISO text or session-zone datetimes."""
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(timezone.utc)


def lease_from_row(row: tuple[Any, ...]) -> Lease:
    """A lease from a row in :data:`LEASE_FIELDS` order; times may be ISO text or datetimes, and
    issuer state JSON text or an already decoded dict, so both backends share it."""
    (lease_id, path, version, stage, issuer, orch, pipeline, run_id, task_id, try_number, map_index,
     principal, issued_at, expires_at, state, revoked_at, reason, issuer_state) = row
    if isinstance(issuer_state, str):
        issuer_state = json.loads(issuer_state)
    return Lease(
        lease_id=lease_id,
        path=SecretPath.parse(path),
        version=version,
        stage=Stage(stage) if stage else None,
        identity=RunIdentity(
            orchestrator=orch, pipeline=pipeline, run_id=run_id, task_id=task_id,
            try_number=try_number, map_index=map_index, principal=principal,
        ),
        issuer=issuer,
        issued_at=_utc(issued_at),
        expires_at=_utc(expires_at),
        state=LeaseState(state),
        revoked_at=_utc(revoked_at),
        revoke_reason=reason,
        issuer_state=issuer_state or {},
    )


def ledger_scope(ledger_id: str) -> str:
    """The row-MAC scope of a ledger: a lease row cannot be copied into another ledger."""
    return f"ledger:{ledger_id}"


def _canonical_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def lease_mac_fields(lease: Lease) -> list[Any]:
    """Everything a lease row says, in one canonical form for both backends: what its MAC covers.

    Computed from the decoded :class:`Lease`, so SQLite's ISO text and PostgreSQL's
    ``timestamptz``/``jsonb`` authenticate the same way.
    """
    i = lease.identity
    return [
        lease.lease_id, str(lease.path), lease.version, lease.stage.value if lease.stage else None, lease.issuer,
        i.orchestrator, i.pipeline, i.run_id, i.task_id, i.try_number, i.map_index, i.principal,
        _canonical_time(lease.issued_at), _canonical_time(lease.expires_at), lease.state.value,
        _canonical_time(lease.revoked_at), lease.revoke_reason,
        json.dumps(lease.issuer_state, sort_keys=True, separators=(",", ":"), default=str),
    ]


def seal_lease(auth: RowAuthenticator, lease: Lease) -> str:
    """The ``mac`` column for a lease row saying exactly what ``lease`` says."""
    return auth.seal("leases", lease_mac_fields(lease))


def authenticated_lease(row: tuple[Any, ...], auth: RowAuthenticator) -> Lease:
    """A lease from a row of :data:`LEASE_FIELDS` plus ``mac``, or :class:`RowTamperedError`.

    A row that does not even decode (an unknown state, a malformed path) is
    tampering too: runlease never writes one.
    """
    lease_id = str(row[0])[:80]
    try:
        lease = lease_from_row(tuple(row[:-1]))
    except Exception:  # noqa: BLE001 - any undecodable row is reported the same way
        raise RowTamperedError("leases", lease_id, "is malformed") from None
    auth.check("leases", lease_id, lease_mac_fields(lease), row[-1])
    return lease


class VerifiedLeaseRows:
    """:func:`authenticated_lease` that skips the MAC check for a row this process already
    authenticated unchanged (see :class:`runlease.integrity.rowauth.VerifiedRows`: the lease
    cache asks "is my lease still active?" on every hit). Each call decodes a new
    :class:`Lease`, so no caller can change what the next one sees."""

    def __init__(self, auth: RowAuthenticator) -> None:
        self.auth = auth
        self.rows = VerifiedRows()

    def lease(self, row: Sequence[Any]) -> Lease:
        row = tuple(row)
        lease_id = str(row[0])
        if self.rows.known("leases", lease_id, row):
            return lease_from_row(row[:-1])
        lease = authenticated_lease(row, self.auth)
        self.rows.remember("leases", lease_id, row)
        return lease

    def state(self, row: Sequence[Any]) -> LeaseState:
        """Only the state of the lease in ``row`` (authenticated like :meth:`lease`): a row known
        unchanged is not even decoded -- the lease cache asks nothing else on a hit."""
        row = tuple(row)
        if self.rows.known("leases", str(row[0]), row):
            return LeaseState(row[_STATE])
        return self.lease(row).state


def updated_active_lease(row: tuple[Any, ...] | None, auth: RowAuthenticator, update: dict[str, Any]
                         ) -> Lease | None:
    """The lease in ``row`` (authenticated, see :func:`authenticated_lease`) with ``update`` applied,
    or None if there is no row or the lease is no longer active: what closing and renewing rewrite."""
    if row is None:
        return None
    lease = authenticated_lease(row, auth)
    if lease.state is not LeaseState.ACTIVE:
        return None
    return lease.model_copy(update=update)


def authenticated_leases(rows: Iterable[tuple[Any, ...]], auth: RowAuthenticator,
                         tampered: list[str] | None) -> list[Lease]:
    """Authenticate every row; with ``tampered`` given, bad rows' ids go there and are skipped,
    otherwise the first bad row raises (so one forged row cannot hide among good ones)."""
    out = []
    for row in rows:
        try:
            out.append(authenticated_lease(row, auth))
        except (RowTamperedError, RowKeyNotLoadedError) as err:
            if tampered is None:
                raise
            tampered.append(err.row_id)
    return out


def lease_filter_sql(
    placeholder: str,
    stored_time: Callable[[datetime], Any],
    *,
    pipeline: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    try_number: int | None = None,
    map_index: int | None = None,
    state: LeaseState | None = None,
    expired_before: datetime | None = None,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (or "") and parameters of a ``find_leases`` call.

    One builder for every ledger so the filters mean the same everywhere; the
    backends differ only in their parameter placeholder and how they store times.
    """
    clauses: list[str] = []
    params: list[Any] = []
    # pipeline matters: Airflow run ids (manual__<date>) repeat across DAGs.
    for column, value in (("pipeline", pipeline), ("run_id", run_id), ("task_id", task_id),
                          ("try_number", try_number), ("map_index", map_index)):
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            params.append(value)
    if state is not None:
        clauses.append(f"state = {placeholder}")
        params.append(state.value)
    if expired_before is not None:
        clauses.append(f"expires_at <= {placeholder}")
        params.append(stored_time(expired_before))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class Ledger(Protocol):
    def atomic(self) -> AbstractContextManager[Any]:
        """Group several ledger writes (and, for the local store, store writes) in one transaction."""
        ...

    def append(self, *events: AuditEvent) -> list[AuditEvent]:
        """Chain and persist events; returns them with ``seq``, ``key_id`` and ``chain`` set."""
        ...

    def record_lease(self, lease: Lease, event: AuditEvent) -> AuditEvent: ...

    def get_lease(self, lease_id: str) -> Lease: ...

    def lease_state(self, lease_id: str) -> LeaseState:
        """The state of one lease, authenticated like :meth:`get_lease` (the lease cache's per-hit check)."""
        ...

    def find_leases(
        self,
        *,
        pipeline: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        try_number: int | None = None,
        map_index: int | None = None,
        state: LeaseState | None = None,
        expired_before: datetime | None = None,
        limit: int | None = None,
        tampered: list[str] | None = None,
    ) -> list[Lease]:
        """Leases matching the filters, every one authenticated (see :func:`authenticated_leases`)."""
        ...

    def close_lease(self, lease_id: str, state: LeaseState, reason: str, at: datetime, event: AuditEvent) -> bool:
        """Mark an active lease revoked/expired and append its event; False if it was not active."""
        ...

    def extend_lease(self, lease_id: str, expires_at: datetime, event: AuditEvent) -> bool:
        """Move an active lease's expiry (its issuer renewed the credential) and append its event.

        False if the lease is no longer active (revoked or expired meanwhile).
        """
        ...

    def events(self, query: AuditQuery) -> Iterator[AuditEvent]: ...

    def verify(self) -> VerifyResult: ...
