"""What the runlease pages show, read from a runtime as plain view models (never a value).

No Airflow import here: the pages' data can be built and tested from any
runtime. Leases carry no credential in the ledger; issuer state (which can
name a dynamic credential's user) is not copied into the view models.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runlease.ledger.base import AuditQuery
from runlease.models import AuditEvent, Lease, LeaseState, Outcome, utcnow
from runlease.rotation.state import Status
from runlease.rotation.status import SecretRotation, scan
from runlease.runtime import Runtime

ORCHESTRATOR = "airflow"
#: Bound on what one page loads; the CLI (`runlease audit show`) has the rest.
MAX_ROWS = 2000


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    checked: int
    first_bad_seq: int | None
    text: str

    def covers(self, seq: int | None) -> bool:
        """Whether an event is inside the verified part of the chain."""
        if seq is None:
            return False
        if self.ok:
            return seq <= self.checked
        return self.first_bad_seq is not None and seq < self.first_bad_seq


@dataclass(frozen=True)
class LeaseRow:
    lease_id: str
    path: str
    version: int
    issuer: str
    issued: str
    expires: str
    state: str
    revoke_reason: str
    revoked: str


@dataclass
class TaskTry:
    """One task try (task id, map index, try number) and what it held."""

    task_id: str
    map_index: int | None
    try_number: int | None
    leases: list[LeaseRow] = field(default_factory=list)

    @property
    def label(self) -> str:
        mapped = "" if self.map_index is None else f"[{self.map_index}]"
        return f"{self.task_id}{mapped} try {'-' if self.try_number is None else self.try_number}"


@dataclass(frozen=True)
class EventRow:
    seq: int | None
    ts: str
    action: str
    outcome: str
    path: str
    version: str
    lease_id: str
    task: str
    try_number: str
    principal: str
    detail: tuple[str, ...]
    chained: bool


@dataclass
class RunView:
    dag_id: str
    run_id: str
    task_id: str | None
    map_index: int | None
    tries: list[TaskTry]
    denials: list[EventRow]
    events: list[EventRow]
    chain: ChainStatus
    truncated: bool

    @property
    def lease_count(self) -> int:
        return sum(len(t.leases) for t in self.tries)

    def count(self, state: str) -> int:
        return sum(1 for t in self.tries for lease in t.leases if lease.state == state)


def chain_status(rt: Runtime) -> ChainStatus:
    result = rt.ledger.verify()
    return ChainStatus(result.ok, result.checked, result.first_bad_seq, result.describe())


def _lease_row(lease: Lease) -> LeaseRow:
    return LeaseRow(
        lease_id=lease.lease_id, path=str(lease.path), version=lease.version, issuer=lease.issuer,
        issued=when(lease.issued_at), expires=when(lease.expires_at), state=lease.state.value,
        revoke_reason=lease.revoke_reason or "", revoked=when(lease.revoked_at),
    )


def _detail_items(detail: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"{key}={detail[key]}" for key in sorted(detail))


def _event_row(event: AuditEvent, chain: ChainStatus) -> EventRow:
    task = event.task_id or ""
    if event.map_index is not None and event.map_index >= 0:
        task += f"[{event.map_index}]"
    return EventRow(
        seq=event.seq, ts=when(event.ts), action=event.action, outcome=event.outcome.value, path=event.path or "",
        version="" if event.version is None else str(event.version), lease_id=event.lease_id or "", task=task,
        try_number="" if event.try_number is None else str(event.try_number), principal=event.principal or "",
        detail=_detail_items(event.detail), chained=chain.covers(event.seq),
    )


def _is_ours(dag_id: str, pipeline: str | None, orchestrator: str | None) -> bool:
    # Run ids repeat across DAGs (same schedule), so every row is matched on the DAG id too.
    return pipeline == dag_id and orchestrator in (ORCHESTRATOR, None)


def run_view(rt: Runtime, dag_id: str, run_id: str, task_id: str | None = None,
             map_index: int | None = None) -> RunView:
    """Leases by task try, denials and audit events of one DAG run (or of one task of it)."""
    leases = rt.ledger.find_leases(pipeline=dag_id, run_id=run_id, task_id=task_id, limit=MAX_ROWS)
    leases = [lease for lease in leases if lease.identity.orchestrator == ORCHESTRATOR
              and (task_id is None or map_index is None or lease.identity.map_index == map_index)]
    tries: dict[tuple[str, int, int], TaskTry] = {}
    for lease in sorted(leases, key=lambda le: le.issued_at):
        i = lease.identity
        key = (i.task_id or "", -1 if i.map_index is None else i.map_index, -1 if i.try_number is None else i.try_number)
        if key not in tries:
            tries[key] = TaskTry(i.task_id or "", i.map_index, i.try_number)
        tries[key].leases.append(_lease_row(lease))
    chain = chain_status(rt)
    events = []
    truncated = False
    for event in rt.ledger.events(AuditQuery(run_id=run_id)):
        if not _is_ours(dag_id, event.pipeline, event.orchestrator):
            continue
        if task_id is not None and event.task_id not in (task_id, None):
            continue
        if task_id is not None and map_index is not None and event.map_index not in (map_index, None):
            continue
        if len(events) >= MAX_ROWS:
            truncated = True
            break
        events.append(_event_row(event, chain))
    denials = [e for e in events if e.outcome == Outcome.DENIED.value]
    return RunView(dag_id, run_id, task_id, map_index, [tries[k] for k in sorted(tries)], denials, events, chain,
                   truncated)


@dataclass(frozen=True)
class RunSummary:
    dag_id: str
    run_id: str
    leases: int
    active: int
    last_issued: str


def recent_runs(rt: Runtime, limit: int = 500) -> list[RunSummary]:
    """Airflow runs with leases, newest first (for the index page; filtered by the caller's access)."""
    grouped: dict[tuple[str, str], list[Lease]] = defaultdict(list)
    for lease in rt.ledger.find_leases(limit=limit):
        i = lease.identity
        if i.orchestrator == ORCHESTRATOR and i.run_id:
            grouped[(i.pipeline, i.run_id)].append(lease)
    rows = [
        RunSummary(dag_id, run_id, len(items), sum(1 for le in items if le.state is LeaseState.ACTIVE),
                   when(max(le.issued_at for le in items)))
        for (dag_id, run_id), items in grouped.items()
    ]
    return sorted(rows, key=lambda r: r.last_issued, reverse=True)


@dataclass(frozen=True)
class RotationRow:
    path: str
    rotator: str
    owner: str
    current_version: int | None
    current_created: str
    age: str
    interval: str
    #: Age of CURRENT as a fraction of the interval (1.0 = due); None without a policy or CURRENT.
    fraction: float | None
    due: str
    state: str  # "ok", "soon", "due", "overdue", "rotating", "grace", "error"
    last_result: str
    previous_in_grace: str


def _state(row: SecretRotation, now: datetime, fraction: float | None) -> str:
    if row.problem is not None:
        return "error"
    if row.state is not None and row.state.status is Status.ROTATING:
        return "rotating"
    if row.state is not None and row.state.status is Status.GRACE:
        return "grace"
    if row.state is not None and row.state.status is Status.FAILED and row.is_due(now):
        return "overdue"
    if fraction is None:
        return "ok"
    if fraction >= 1.25:
        return "overdue"
    if fraction >= 1.0:
        return "due"
    return "soon" if fraction >= 0.8 else "ok"


def rotation_rows(rt: Runtime, prefix: str = "") -> list[RotationRow]:
    """Every secret with a rotation policy: age of CURRENT against its interval, due, owner, last result."""
    from runlease.cli.rotation_cmd import age, due_text

    now = utcnow()
    out = []
    for row in scan(rt.store, prefix):
        policy = row.policy
        fraction = None
        age_text = ""
        if row.current_created_at is not None:
            delta = now - row.current_created_at
            age_text = age(delta)
            if policy is not None and policy.interval_s > 0:
                fraction = max(delta.total_seconds(), 0.0) / policy.interval_s
        grace = ""
        if row.state is not None and row.state.status is Status.GRACE:
            retire = row.retire_at()
            grace = f"v{row.state.previous_version} until {when(retire)}" if retire else f"v{row.state.previous_version}"
        out.append(RotationRow(
            path=str(row.path), rotator=policy.rotator if policy else "?", owner=row.owner or "",
            current_version=row.current_version, current_created=when(row.current_created_at), age=age_text,
            interval=age(policy.interval) if policy else "", fraction=fraction, due=due_text(row, now),
            state=_state(row, now, fraction), last_result=row.last_result(), previous_in_grace=grace,
        ))
    return out
