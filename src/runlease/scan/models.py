"""Data shapes that cross module boundaries: raw hits inside a file, and findings.

A :class:`Hit` is what a detector returns: a rule id and *where* the value sits
(line and column span), never the value itself. A :class:`Finding` is what leaves
the scanner (tables, JSON, SARIF, baselines); it carries a redacted excerpt and a
fingerprint, so no output path can ever serialise the secret by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class Hit:
    """A detector's raw result: ``rule_id`` matched on 1-based ``line``.

    ``start``/``end`` are 0-based character columns of the secret value within
    that line; ``end`` None means "to the end of the line" (multi-line literals,
    key blocks). The excerpt builder blanks exactly this span.
    """

    rule_id: str
    line: int
    start: int
    end: int | None = None
    message: str | None = None  # replaces the excerpt for file-level findings


class Finding(BaseModel):
    """One reported finding. Contains no part of the secret value by construction."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    severity: str
    title: str
    path: str
    line: int
    column: int
    excerpt: str
    fingerprint: str
    commit: str | None = None
    suppressed_by: str | None = None

    @property
    def location(self) -> str:
        """``path:line`` (prefixed by the short commit for history findings)."""
        loc = f"{self.path}:{self.line}"
        return f"{self.commit[:12]}:{loc}" if self.commit else loc
