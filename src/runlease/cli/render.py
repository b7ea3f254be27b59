"""Rich tables and JSON records for the CLI; masking lives here so every listing masks the same way."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from runlease.cli.output import table, text
from runlease.connection import SENSITIVE_EXTRA_WORDS
from runlease.models import AuditEvent, Lease, SecretInfo, SecretValue, SecretVersion, Stage

MASK = "***"
#: How a row that failed authentication is shown in a listing (runlease.cli.listing).
TAMPERED = "TAMPERED"


def _row_id(name: str) -> Text:
    """The row part of a ``"<table> <row>"`` name, as plain text (a forged id may hold Rich markup)."""
    return Text(name.partition(" ")[2])


def masked(value: SecretValue) -> Any:
    """A display copy of a value with every credential replaced by ``***``."""
    if isinstance(value, str):
        return f"{MASK} ({len(value)} chars)"
    out = dict(value)
    if out.get("password"):
        out["password"] = MASK
    out["extra"] = _mask_extra(out.get("extra") or {}, False)
    return out


def _mask_extra(value: Any, sensitive: bool) -> Any:
    if isinstance(value, dict):
        return {k: _mask_extra(v, sensitive or any(w in str(k).lower() for w in SENSITIVE_EXTRA_WORDS))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_extra(v, sensitive) for v in value]
    return MASK if sensitive and value not in (None, "") else value


def value_table(title: str, value: Any) -> Table:
    tbl = table(title, ("field", "value"))
    if isinstance(value, dict):
        for key in ("conn_type", "host", "login", "password", "schema", "port"):
            if value.get(key) is not None:
                tbl.add_row(key, text(value[key]))
        for key, item in (value.get("extra") or {}).items():
            tbl.add_row(text(f"extra.{key}"), text(item))
    else:
        tbl.add_row("value", text(value))
    return tbl


def iso_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- records: what --format json prints (never a value) -----------------------------


def secret_record(info: SecretInfo) -> dict[str, Any]:
    return {
        "path": str(info.path),
        "current": info.stages.get(Stage.CURRENT), "pending": info.stages.get(Stage.PENDING),
        "previous": info.stages.get(Stage.PREVIOUS),
        "versions": info.versions, "issuer": info.metadata.get("issuer", "static"),
        "created_at": iso_time(info.created_at), "updated_at": iso_time(info.updated_at),
        "state": "deleted" if info.deleted else "live",
        "metadata": info.metadata,
    }


def version_record(v: SecretVersion) -> dict[str, Any]:
    return {"path": str(v.path), "version": v.version, "created_at": iso_time(v.created_at),
            "stages": [s.value for s in v.stages], "deprecated": v.deprecated}


def lease_record(lease: Lease) -> dict[str, Any]:
    """A lease without its credential and without issuer state (which can name the credential)."""
    i = lease.identity
    return {
        "lease_id": lease.lease_id, "path": str(lease.path), "version": lease.version,
        "stage": lease.stage.value if lease.stage else None, "issuer": lease.issuer, "state": lease.state.value,
        "orchestrator": i.orchestrator, "pipeline": i.pipeline, "run_id": i.run_id, "task_id": i.task_id,
        "try_number": i.try_number, "map_index": i.map_index, "principal": i.principal,
        "issued_at": iso_time(lease.issued_at), "expires_at": iso_time(lease.expires_at),
        "revoked_at": iso_time(lease.revoked_at), "revoke_reason": lease.revoke_reason,
    }


def event_record(event: AuditEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


# -- tables -------------------------------------------------------------------------


def secrets_table(rows: Iterable[SecretInfo], tampered: Iterable[str] = ()) -> Table:
    tbl = table("secrets", ("path", "CURRENT", "PENDING", "PREVIOUS", "versions", "issuer", "updated", "state"))
    for info in rows:
        tbl.add_row(
            text(info.path),
            *(text(info.stages.get(s, "")) for s in (Stage.CURRENT, Stage.PENDING, Stage.PREVIOUS)),
            text(info.versions),
            text(info.metadata.get("issuer", "static")),
            text(info.updated_at.strftime("%Y-%m-%d %H:%M:%S")),
            text("deleted" if info.deleted else "live"),
        )
    for name in tampered:
        tbl.add_row(_row_id(name), "", "", "", "", "", "", TAMPERED)
    return tbl


def history_table(path: str, rows: Iterable[SecretVersion], tampered: Iterable[str] = ()) -> Table:
    tbl = table(f"history of {path}", ("version", "created", "stages", "deprecated"))
    for v in rows:
        tbl.add_row(text(v.version), text(v.created_at.strftime("%Y-%m-%d %H:%M:%S")),
                    text(", ".join(s.value for s in v.stages)), text("yes" if v.deprecated else ""))
    for name in tampered:
        if name.startswith("versions "):
            tbl.add_row(Text(name.rpartition(" v")[2]), "", TAMPERED, "")
        else:  # the secret's own row, which holds the stage labels
            tbl.add_row("-", "", f"{TAMPERED} (secret row: stage labels unknown)", "")
    return tbl


def leases_table(rows: Iterable[Lease], title: str = "leases", tampered: Iterable[str] = ()) -> Table:
    tbl = table(title, ("lease", "path", "v", "state", "pipeline", "run_id", "task", "try", "issued", "expires",
                        "reason"))
    for lease in rows:
        i = lease.identity
        tbl.add_row(*map(text, (
            lease.lease_id, lease.path, lease.version, lease.state.value, i.pipeline, i.run_id,
            i.task_id, i.try_number, lease.issued_at.strftime("%H:%M:%S"), lease.expires_at.strftime("%H:%M:%S"),
            lease.revoke_reason,
        )))
    for name in tampered:
        tbl.add_row(_row_id(name), "", "", TAMPERED, "", "", "", "", "", "", "")
    return tbl


def tampered_record(name: str) -> dict[str, Any]:
    """A ``--format json`` row for a row that failed authentication: which table and row, never a value."""
    table_name, _, row_id = name.partition(" ")
    return {"tampered": True, "table": table_name, "row": row_id}


def identity_label(event: AuditEvent) -> str:
    """Who vouched for the event's identity: ``claimed`` (what the caller said), or the proof's
    method and the fields it covers (``airflow-execution-api:pipeline,run_id,...``; ``oidc:<subject>``)."""
    proof = event.detail.get("verified") if isinstance(event.detail, dict) else None
    if not isinstance(proof, dict):
        return "claimed"
    method = str(proof.get("method", "verified"))
    if method == "oidc":
        return f"oidc:{proof.get('subject', '')}"
    fields = proof.get("fields") or []
    return f"{method}:{','.join(map(str, fields))}" if fields else method


def audit_table(rows: Iterable[AuditEvent], title: str = "audit trail") -> Table:
    tbl = table(title, ("seq", "time", "action", "outcome", "path", "v", "lease", "run_id", "task", "try",
                        "principal", "identity"))
    for e in rows:
        tbl.add_row(*map(text, (
            e.seq, e.ts.strftime("%H:%M:%S.%f")[:-3], e.action, e.outcome.value, e.path, e.version, e.lease_id,
            e.run_id, e.task_id, e.try_number, e.principal, identity_label(e),
        )))
    return tbl
