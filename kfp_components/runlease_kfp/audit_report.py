"""A KFP run's audit trail as Markdown and HTML: the body of the ``run_audit_report`` component.

KFP's UI renders ``system.Markdown`` and ``system.HTML`` artifacts inline,
so the people looking at a run see which credentials it leased, in which
version, from which task, and that every lease was given back, next to the
run's other outputs. The report is built from audit events and lease rows,
which have no field for a value; cells are escaped (and passed through the
process redactor as a last guard), so a task name cannot inject markup.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runlease.audit.chain import VerifyResult
from runlease.ledger.base import AuditQuery
from runlease.models import AuditEvent, Lease, LeaseState, Outcome
from runlease.redact import default_redactor
from runlease.runtime import Runtime

COLUMNS: tuple[str, ...] = ("seq", "time (UTC)", "action", "outcome", "task", "path", "v", "lease", "principal", "detail")
#: ``detail`` keys worth showing; the broker only puts names and numbers there, never values.
_DETAIL_KEYS: tuple[str, ...] = ("reason", "issuer", "stage", "ttl_s", "capability", "error")


@dataclass
class RunAudit:
    """Everything the report shows about one run."""

    run_id: str
    events: list[AuditEvent]
    active: list[Lease]
    chain: VerifyResult
    counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def collect(cls, runtime: Runtime, run_id: str) -> "RunAudit":
        events = list(runtime.ledger.events(AuditQuery(run_id=run_id)))
        active = runtime.ledger.find_leases(run_id=run_id, state=LeaseState.ACTIVE)
        counts: Counter[str] = Counter()
        for event in events:
            counts[event.action if event.outcome is Outcome.OK else f"{event.action} {event.outcome.value}"] += 1
        return cls(run_id, events, active, runtime.ledger.verify(), counts)

    def metadata(self) -> dict[str, Any]:
        """Small, non-secret facts for the artifact's metadata (shown in the KFP UI)."""
        return {
            "run_id": self.run_id,
            "events": len(self.events),
            "leases": self.counts["lease"],
            "revoked": self.counts["revoke"],
            "expired": self.counts["expire"],
            "denied": sum(n for k, n in self.counts.items() if k.endswith(Outcome.DENIED.value)),
            "active_leases": len(self.active),
            "audit_chain_ok": self.chain.ok,
        }


def _cells(event: AuditEvent) -> list[str]:
    detail = ", ".join(f"{k}={event.detail[k]}" for k in _DETAIL_KEYS if k in event.detail)
    return [
        str(event.seq), event.ts.strftime("%Y-%m-%d %H:%M:%S"), event.action, event.outcome.value,
        event.task_id or "", event.path or "", "" if event.version is None else str(event.version),
        event.lease_id or "", event.principal or "", detail,
    ]


def _summary_lines(audit: RunAudit) -> list[str]:
    meta = audit.metadata()
    lines = [
        f"leases issued: {meta['leases']}, revoked: {meta['revoked']}, expired: {meta['expired']}, "
        f"denied: {meta['denied']}, still active: {meta['active_leases']}",
        audit.chain.describe(),
    ]
    if audit.active:
        lines.append("still active: " + ", ".join(f"{lease.lease_id} ({lease.path}, task {lease.identity.task_id})"
                                                  for lease in audit.active))
    return lines


def _md(text: str) -> str:
    text = default_redactor().redact(text)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", " ").replace("<", "&lt;")


def render_markdown(audit: RunAudit) -> str:
    out = [f"# runlease audit trail of KFP run `{_md(audit.run_id)}`", ""]
    out += [f"- {_md(line)}" for line in _summary_lines(audit)]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for event in audit.events:
        out.append("| " + " | ".join(_md(c) for c in _cells(event)) + " |")
    if not audit.events:
        out.append("| " + " | ".join(["-"] * len(COLUMNS)) + " |")
    out += ["", "Values are never recorded; this table shows which credential, version and lease, not what it was."]
    return "\n".join(out) + "\n"


def _h(text: str) -> str:
    return html.escape(default_redactor().redact(text), quote=True)


def render_html(audit: RunAudit) -> str:
    rows = "\n".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in _cells(e)) + "</tr>" for e in audit.events)
    head = "".join(f"<th>{_h(c)}</th>" for c in COLUMNS)
    summary = "".join(f"<li>{_h(line)}</li>" for line in _summary_lines(audit))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>runlease audit trail of run {_h(audit.run_id)}</title>"
        "<style>table{border-collapse:collapse;font:13px monospace}td,th{border:1px solid #ccc;padding:2px 6px}"
        "</style></head><body>"
        f"<h1>runlease audit trail of KFP run <code>{_h(audit.run_id)}</code></h1><ul>{summary}</ul>"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>"
        "<p>Values are never recorded; this table shows which credential, version and lease, not what it was.</p>"
        "</body></html>\n"
    )


def write_report(audit: RunAudit, markdown_path: str | Path, html_path: str | Path | None = None) -> None:
    """Write the Markdown (and HTML) report files, creating parent directories as KFP expects."""
    for path, text in ((markdown_path, render_markdown(audit)), (html_path, render_html(audit) if html_path else None)):
        if path is None or text is None:
            continue
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
