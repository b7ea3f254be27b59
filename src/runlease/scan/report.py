"""Render scan results: a rich table for people, JSON for scripts, SARIF for code scanning.

All three read only :class:`~runlease.scan.models.Finding` fields, which carry a
redacted excerpt and never the value, so no output format can leak one.
SARIF follows version 2.1.0 with full rule metadata and ``partialFingerprints``
so code-scanning UIs (GitHub, GitLab) track a finding across commits.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .engine import ScanResult
from .rules import RULES, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SECURITY_SEVERITY = {Severity.ERROR: "8.0", Severity.WARNING: "5.0", Severity.NOTE: "2.0"}


def _version() -> str:
    from runlease import __version__

    return __version__


def render_table(result: ScanResult, console: Console) -> None:
    """Findings as a table plus a one-line summary (what a person runs locally)."""
    if result.findings:
        table = Table(title="runlease scan", show_lines=False, expand=False)
        table.add_column("Location", style="cyan", no_wrap=True)
        table.add_column("Rule", style="magenta", no_wrap=True)
        table.add_column("Severity")
        table.add_column("Excerpt (value redacted)", overflow="fold")
        for finding in result.findings:
            style = "red" if finding.severity == "error" else "yellow"
            # Excerpts are code: escape them so "[red]" in a line is not read as rich markup.
            table.add_row(
                escape(finding.location), finding.rule_id, f"[{style}]{finding.severity}[/]", escape(finding.excerpt)
            )
        console.print(table, markup=True, highlight=False)
    console.print(summary_line(result), highlight=False, markup=False)


def summary_line(result: ScanResult) -> str:
    """Counts that tell a reader the scan ran, over what, and what was suppressed."""
    stats = result.stats
    by_reason = Counter(f.suppressed_by for f in result.suppressed)
    parts = [
        f"{len(result.findings)} finding(s)",
        f"{stats.files_scanned} file(s) scanned",
    ]
    if stats.files_skipped:
        parts.append(f"{stats.files_skipped} skipped (binary/too large)")
    if result.suppressed:
        parts.append(", ".join(f"{n} suppressed by {reason}" for reason, n in sorted(by_reason.items())))
    return "; ".join(parts)


def to_json(result: ScanResult) -> str:
    """Stable JSON document: findings, suppressed count and coverage stats."""
    document: dict[str, Any] = {
        "tool": "runlease scan",
        "version": _version(),
        "findings": [f.model_dump(exclude={"suppressed_by"}) for f in result.findings],
        "suppressed": len(result.suppressed),
        "stats": {
            "files_scanned": result.stats.files_scanned,
            "files_skipped": result.stats.files_skipped,
            "bytes_scanned": result.stats.bytes_scanned,
        },
    }
    return json.dumps(document, indent=2)


def _sarif_rule(rule_id: str) -> dict[str, Any]:
    rule = RULES[rule_id]
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.explanation},
        "help": {"text": rule.explanation, "markdown": f"**{rule.title}**\n\n{rule.explanation}"},
        "defaultConfiguration": {"level": rule.severity.value},
        "properties": {
            "tags": ["security", "secrets", *rule.tags],
            "security-severity": _SECURITY_SEVERITY[rule.severity],
            "precision": "high" if "format" in rule.tags else "medium",
        },
    }


def to_sarif(result: ScanResult) -> str:
    """SARIF 2.1.0 log with one run, every rule's metadata and one result per finding."""
    rule_ids = list(RULES)
    results = []
    for finding in result.findings:
        rule = RULES[finding.rule_id]
        message = f"{rule.title}: {rule.explanation}"
        if finding.commit:
            message = f"{message} (introduced in commit {finding.commit})"
        results.append(
            {
                "ruleId": finding.rule_id,
                "ruleIndex": rule_ids.index(finding.rule_id),
                "level": finding.severity,
                "message": {"text": message},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": finding.path, "uriBaseId": "%SRCROOT%"},
                            "region": {
                                "startLine": finding.line,
                                "startColumn": finding.column,
                                "snippet": {"text": finding.excerpt},
                            },
                        }
                    }
                ],
                "partialFingerprints": {"runleaseFingerprint/v1": finding.fingerprint},
                **({"properties": {"commit": finding.commit}} if finding.commit else {}),
            }
        )
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "runlease-scan",
                        "semanticVersion": _version(),
                        "rules": [_sarif_rule(rule_id) for rule_id in rule_ids],
                    }
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2)
