"""Redacted excerpts and value-free fingerprints.

The excerpt is the only piece of file content that leaves the scanner. It is the
finding's line with every flagged span on that line replaced by a
``«redacted:<rule>»`` marker (no characters of the value survive, not even a
prefix), then scrubbed once more with the known-format regexes as a last line of
defence against a span computed too short.
"""

from __future__ import annotations

import hashlib
import re

from .models import Hit
from .patterns import PRIVATE_KEY_HEADER, SCRUB_PATTERNS, URI_CREDENTIALS
from .vendors import SCRUB_PATTERNS as VENDOR_SCRUB_PATTERNS

MAX_EXCERPT = 160


def marker(rule_id: str) -> str:
    """The text that stands in for a redacted value."""
    return f"«redacted:{rule_id}»"


def redact_line(line: str, hits: list[Hit]) -> str:
    """``line`` with every hit's span replaced by its marker (right to left)."""
    spans = sorted(
        ((h.start, len(line) if h.end is None else h.end, h.rule_id) for h in hits if h.message is None),
        reverse=True,
    )
    out = line
    last_start = len(line) + 1
    for start, end, rule_id in spans:
        end = min(end, last_start)  # overlapping spans: the earlier marker covers the rest
        if start > end or (start == end and start < len(line)):
            continue  # start == end == len(line): a value continuing on later lines
        out = out[:start] + marker(rule_id) + out[end:]
        last_start = start
    return scrub(out)


def scrub(text: str) -> str:
    """Blank anything that still matches a known credential format."""
    for pattern in (*SCRUB_PATTERNS, *VENDOR_SCRUB_PATTERNS):
        text = pattern.sub(marker("scrubbed"), text)
    text = URI_CREDENTIALS.sub(_scrub_uri, text)
    header = PRIVATE_KEY_HEADER.search(text)
    if header and text[header.end():].strip(" \"'\\n,"):
        text = text[: header.end()] + marker("scrubbed")
    return text


def _scrub_uri(match: re.Match[str]) -> str:
    if match.group("pw").startswith("«redacted"):
        return match.group(0)
    return match.group(0)[: match.start("pw") - match.start(0)] + marker("scrubbed") + "@"


def shorten(text: str, limit: int = MAX_EXCERPT) -> str:
    """Collapse indentation and cut around the first marker to ``limit`` chars."""
    text = text.strip()
    if len(text) <= limit:
        return text
    at = max(text.find("«redacted"), 0)
    start = max(0, min(at - limit // 3, len(text) - limit))
    piece = text[start: start + limit]
    return ("…" if start > 0 else "") + piece + ("…" if start + limit < len(text) else "")


def fingerprint(rule_id: str, path: str, redacted_line: str, occurrence: int) -> str:
    """Stable id of a finding: rule, path, redacted line text and occurrence index.

    Built only from the redacted line, so a baseline never holds the value or a
    hash of it (a hash of a weak password is as good as the password). Line
    numbers are left out so that edits elsewhere in the file keep it stable.
    """
    normalized = " ".join(redacted_line.split())
    payload = "\x1f".join((rule_id, path, normalized, str(occurrence)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
