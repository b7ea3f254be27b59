"""Suppressions: inline ``# runlease: allow <rule>`` pragmas and a baseline file.

Pragmas live next to the code they excuse, so a reviewer sees them. The baseline
(``runlease scan --write-baseline``) records existing findings so that CI fails
only on new ones; it is keyed by :func:`runlease.scan.excerpt.fingerprint`, which
hashes the rule, path and *redacted* line, never the value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from .models import Finding
from .rules import RULES

DEFAULT_BASELINE = ".runlease-baseline.json"
BASELINE_VERSION = 1

_PRAGMA = re.compile(r"runlease:\s*allow\b\s*(?P<rules>[A-Za-z0-9_,\- \t]*)")


class BaselineError(ValueError):
    """The baseline file is missing, unreadable or not a runlease baseline."""


def pragma_rules(line: str) -> set[str]:
    """Rule ids allowed by a pragma on ``line`` (empty set: no pragma).

    Unknown ids are ignored rather than treated as 'allow all', so a typo never
    silences more than intended.
    """
    match = _PRAGMA.search(line)
    if not match:
        return set()
    return {rule for rule in re.split(r"[\s,]+", match.group("rules")) if rule in RULES}


def is_allowed_by_pragma(rule_id: str, line: str, previous_line: str = "") -> bool:
    """Pragma on the finding's line, or on a comment-only line right above it."""
    if rule_id in pragma_rules(line):
        return True
    stripped = previous_line.strip()
    return stripped.startswith(("#", "//", ";")) and rule_id in pragma_rules(stripped)


def load_baseline(path: Path) -> set[str]:
    """Fingerprints recorded in the baseline at ``path``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"baseline file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc.__class__.__name__}") from None
    if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION or not isinstance(
        data.get("findings"), list
    ):
        raise BaselineError(f"{path} is not a runlease scan baseline (version {BASELINE_VERSION})")
    return {str(item["fingerprint"]) for item in data["findings"] if isinstance(item, dict) and "fingerprint" in item}


def write_baseline(path: Path, findings: Iterable[Finding]) -> int:
    """Write ``findings`` as the new baseline (atomically); return how many."""
    entries = sorted(
        ({"fingerprint": f.fingerprint, "rule_id": f.rule_id, "path": f.path, "line": f.line} for f in findings),
        key=lambda e: (e["path"], e["line"], e["rule_id"], e["fingerprint"]),
    )
    unique = list({e["fingerprint"]: e for e in entries}.values())
    document = {
        "version": BASELINE_VERSION,
        "tool": "runlease scan",
        "generated_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "about": "Accepted findings. Fingerprints hash rule, path and the redacted line; no value is stored.",
        "findings": unique,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(unique)
