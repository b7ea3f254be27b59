"""``RemoteBroker`` and ``RemoteLedger``: the broker's and the ledger's methods, over HTTP.

Same signatures as :class:`runlease.broker.Broker` and the ledger protocol
for what a client may do (lease, renew, revoke, revoke a run, sweep, verify
a presented key, list leases, read and verify the audit trail), so adapters
call them without knowing where the broker runs. The identity a caller
passes is sent as *claims* (run, task, try); the server replaces the
principal with the subject of the bearer token. Leased values are
registered with the process redactor the moment they arrive, as the
in-process broker does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from pydantic import Secret

from runlease.audit.chain import VerifyResult
from runlease.errors import ConfigError
from runlease.ledger.base import AuditQuery
from runlease.models import (
    IDENTITY_FIELDS,
    AuditEvent,
    Lease,
    LeaseState,
    RunIdentity,
    SecretInfo,
    SecretPath,
    SecretValue,
    Stage,
)
from runlease.redact import Redactor, default_redactor
from runlease.remote.http import ServerClient

_PAGE = 1000


def claims_of(identity: RunIdentity | None) -> dict[str, Any]:
    if identity is None:
        return {}
    return {name: getattr(identity, name) for name in IDENTITY_FIELDS if getattr(identity, name) is not None}


def _seconds(ttl: timedelta | float | int | None) -> float | None:
    if ttl is None:
        return None
    return ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)


def _server_only(what: str) -> ConfigError:
    return ConfigError(f"{what} needs a runlease home; through RUNLEASE_SERVER a client can lease, renew, "
                       "revoke, list leases and read the audit trail (unset RUNLEASE_SERVER on the server's host)")


class RemoteBroker:
    """What a workload or an operator may ask of ``runlease serve``."""

    def __init__(self, client: ServerClient, redactor: Redactor | None = None) -> None:
        self.client = client
        self.redactor = redactor or default_redactor()

    def mask(self, value: SecretValue) -> None:
        from runlease.broker import secret_strings

        self.redactor.add_many(secret_strings(value))

    def lease(self, ref: str | SecretPath, identity: RunIdentity | None = None,
              ttl: timedelta | float | int | None = None, *, kind: str = "connections",
              stage: Stage = Stage.CURRENT, detail: dict[str, Any] | None = None) -> Lease:
        doc = self.client.request("POST", "/v1/leases", {
            "ref": str(ref), "kind": kind, "ttl": _seconds(ttl), "stage": stage.value, "claims": claims_of(identity),
        })
        value = doc.pop("value", None)
        if value is not None:
            self.mask(value)  # before anything (even validation errors) could print it
        lease = Lease.model_validate(doc["lease"])
        return lease.model_copy(update={"credential": Secret(value)})

    def renew(self, lease_id: str, ttl: timedelta | float | int | None = None,
              identity: RunIdentity | None = None) -> Lease:
        doc = self.client.request("POST", f"/v1/leases/{lease_id}/renew", {"ttl": _seconds(ttl)})
        return Lease.model_validate(doc["lease"])

    def revoke(self, lease_id: str, reason: str = "revoked", identity: RunIdentity | None = None) -> bool:
        doc = self.client.request("POST", f"/v1/leases/{lease_id}/revoke", {"reason": reason[:200]})
        return bool(doc["revoked"])

    def revoke_where(self, reason: str, identity: RunIdentity | None = None, **filters: Any) -> int:
        run_id = filters.pop("run_id", None)
        if run_id is None:
            raise ConfigError("revoking through runlease serve needs a run id")
        body = {"run_id": run_id, "reason": reason[:200], "pipeline": filters.pop("pipeline", None),
                "task_id": filters.pop("task_id", None)}
        unsupported = {k for k, v in filters.items() if v is not None}
        if unsupported:
            raise ConfigError(f"runlease serve cannot filter a run's revocation by {', '.join(sorted(unsupported))}")
        return int(self.client.request("POST", "/v1/runs/revoke", body)["revoked"])

    def revoke_run(self, run_id: str, reason: str = "run ended", identity: RunIdentity | None = None, *,
                   pipeline: str | None = None) -> int:
        """Every active lease of the run that this caller owns, scoped to ``pipeline`` (default: the
        identity's), as :meth:`Broker.revoke_run` does: run ids repeat across pipelines."""
        if pipeline is None and identity is not None:
            pipeline = identity.pipeline
        return self.revoke_where(reason, identity, run_id=run_id, pipeline=pipeline)

    def revoke_task(self, run_id: str, task_id: str, try_number: int | None = None, map_index: int | None = None,
                    reason: str = "task ended", identity: RunIdentity | None = None, *,
                    pipeline: str | None = None) -> int:
        return self.revoke_where(reason, identity, run_id=run_id, task_id=task_id, try_number=try_number,
                                 map_index=map_index, pipeline=pipeline)

    def sweep_expired(self, now: Any = None) -> int:
        if now is not None:
            raise ConfigError("the server sweeps with its own clock")
        return int(self.client.request("POST", "/v1/sweep")["expired"])

    def verify_presented_key(self, ref: str | SecretPath, presented: str, identity: RunIdentity | None = None, *,
                             kind: str = "tokens") -> bool:
        doc = self.client.request("POST", "/v1/verify", {"ref": str(ref), "presented": presented, "kind": kind})
        return bool(doc["matched"])

    def secret_info(self, path: str | SecretPath) -> SecretInfo:
        p = path if isinstance(path, SecretPath) else SecretPath.parse(path)
        return SecretInfo.model_validate(self.client.request("GET", f"/v1/secrets/{p.env}/{p.kind}/{p.name}")["secret"])

    def __getattr__(self, name: str) -> Any:
        raise _server_only(f"broker.{name}")


class RemoteLedger:
    """The ledger's read side through the server: a workload sees its own leases and events."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client

    def find_leases(self, *, pipeline: str | None = None, run_id: str | None = None, task_id: str | None = None,
                    try_number: int | None = None, map_index: int | None = None, state: LeaseState | None = None,
                    expired_before: Any = None, limit: int | None = None) -> list[Lease]:
        if expired_before is not None:
            raise ConfigError("the server decides what has expired (its sweep); expired_before is not a filter here")
        doc = self.client.request("GET", "/v1/leases", query={
            "run_id": run_id, "pipeline": pipeline, "state": state.value if state else None, "limit": limit or 10_000,
        })
        leases = [Lease.model_validate(row) for row in doc["leases"]]
        for name, wanted in (("task_id", task_id), ("try_number", try_number), ("map_index", map_index)):
            if wanted is not None:
                leases = [lease for lease in leases if getattr(lease.identity, name) == wanted]
        return leases

    def get_lease(self, lease_id: str) -> Lease:
        return Lease.model_validate(self.client.request("GET", f"/v1/leases/{lease_id}")["lease"])

    def lease_state(self, lease_id: str) -> LeaseState:
        return self.get_lease(lease_id).state

    def events(self, query: AuditQuery) -> Iterator[AuditEvent]:
        after, left = query.after_seq, query.limit
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            doc = self.client.request("GET", "/v1/audit", query={
                "run_id": query.run_id, "path": query.path, "principal": query.principal, "action": query.action,
                "after_seq": after, "limit": page,
            })
            rows = [AuditEvent.model_validate(row) for row in doc["events"]]
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1].seq or after
            if left is not None:
                left -= len(rows)

    def verify(self) -> VerifyResult:
        doc = self.client.request("GET", "/v1/audit/verify")
        return VerifyResult(ok=doc["ok"], checked=doc["checked"], first_bad_seq=doc.get("first_bad_seq"),
                            reason=doc.get("reason") or "")

    def __getattr__(self, name: str) -> Any:
        raise _server_only(f"ledger.{name}")
