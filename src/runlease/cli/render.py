"""Rich tables for the CLI; masking lives here so every listing masks the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from runlease.connection import SENSITIVE_EXTRA_WORDS
from runlease.models import AuditEvent, Lease, SecretInfo, SecretValue, SecretVersion, Stage

MASK = "***"
#: How a row that failed authentication is shown in a listing (runlease.listing).
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
    table = Table(title=title, show_header=True)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    if isinstance(value, dict):
        for key in ("conn_type", "host", "login", "password", "schema", "port"):
            if value.get(key) is not None:
                table.add_row(key, str(value[key]))
        for key, item in (value.get("extra") or {}).items():
            table.add_row(f"extra.{key}", str(item))
    else:
        table.add_row("value", str(value))
    return table


def secrets_table(rows: Iterable[SecretInfo], tampered: Iterable[str] = ()) -> Table:
    table = Table(title="secrets")
    for col in ("path", "CURRENT", "PENDING", "PREVIOUS", "versions", "issuer", "updated", "state"):
        table.add_column(col)
    for info in rows:
        table.add_row(
            str(info.path),
            *(str(info.stages.get(s, "")) for s in (Stage.CURRENT, Stage.PENDING, Stage.PREVIOUS)),
            str(info.versions),
            str(info.metadata.get("issuer", "static")),
            info.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            "deleted" if info.deleted else "live",
        )
    for name in tampered:
        table.add_row(_row_id(name), "", "", "", "", "", "", TAMPERED)
    return table


def history_table(path: str, rows: Iterable[SecretVersion], tampered: Iterable[str] = ()) -> Table:
    table = Table(title=f"history of {path}")
    for col in ("version", "created", "stages", "deprecated"):
        table.add_column(col)
    for v in rows:
        table.add_row(str(v.version), v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      ", ".join(s.value for s in v.stages), "yes" if v.deprecated else "")
    for name in tampered:
        if name.startswith("versions "):
            table.add_row(Text(name.rpartition(" v")[2]), "", TAMPERED, "")
        else:  # the secret's own row, which holds the stage labels
            table.add_row("-", "", f"{TAMPERED} (secret row: stage labels unknown)", "")
    return table


def leases_table(rows: Iterable[Lease], title: str = "leases", tampered: Iterable[str] = ()) -> Table:
    table = Table(title=title)
    for col in ("lease", "path", "v", "state", "pipeline", "run_id", "task", "try", "issued", "expires", "reason"):
        table.add_column(col, overflow="fold")
    for lease in rows:
        i = lease.identity
        table.add_row(
            lease.lease_id, str(lease.path), str(lease.version), lease.state.value, i.pipeline, i.run_id or "",
            i.task_id or "", "" if i.try_number is None else str(i.try_number),
            lease.issued_at.strftime("%H:%M:%S"), lease.expires_at.strftime("%H:%M:%S"), lease.revoke_reason or "",
        )
    for name in tampered:
        table.add_row(_row_id(name), "", "", TAMPERED, "", "", "", "", "", "", "")
    return table


def audit_table(rows: Iterable[AuditEvent], title: str = "audit trail") -> Table:
    table = Table(title=title)
    for col in ("seq", "time", "action", "outcome", "path", "v", "lease", "run_id", "task", "try", "principal"):
        table.add_column(col, overflow="fold")
    for e in rows:
        table.add_row(
            str(e.seq), e.ts.strftime("%H:%M:%S.%f")[:-3], e.action, e.outcome.value, e.path or "",
            "" if e.version is None else str(e.version), e.lease_id or "", e.run_id or "", e.task_id or "",
            "" if e.try_number is None else str(e.try_number), e.principal or "",
        )
    return table
