"""The scan pipeline for one text and for many files.

Per file: one prefilter pass picks the detector groups; known-format regexes run
over the whole text, Python is parsed once for the AST rules, other text gets the
line-based assignment rules, .env files their file-level rules. Overlapping hits
on a line collapse to the most specific rule, pragmas are applied, and each hit
becomes a :class:`Finding` with a redacted excerpt and a value-free fingerprint.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from . import dotenv, patterns, python_ast, vendors
from .excerpt import fingerprint, redact_line, shorten
from .files import DEFAULT_MAX_BYTES, ScanTarget, read_text
from .models import Finding, Hit
from .prefilter import AST_FOCUS_GROUPS, AST_GROUPS, default_prefilter
from .rules import RULES
from .suppress import is_allowed_by_pragma
from .textindex import TextIndex

PYTHON_SUFFIXES = frozenset({".py", ".pyw", ".pyi"})
# Config formats where ``key: value`` with an unquoted value is a literal. In code
# (JS, Go, ...) an unquoted right-hand side is an expression, so only quoted
# values count there.
UNQUOTED_VALUE_SUFFIXES = frozenset(
    {".yaml", ".yml", ".ini", ".cfg", ".conf", ".properties", ".toml", ".env", ".sh", ".bash", ".zsh", ".envrc"}
)
UNQUOTED_VALUE_NAMES = frozenset({"dockerfile", "containerfile", ".envrc", "makefile"})
# Translation catalogs map "password" to its word in each language: prose keyed by
# secret-looking names. Only value formats are checked in them.
CATALOG_DIRS = frozenset({"locale", "locales", "i18n", "l10n", "translations", "lang", "langs"})


def is_translation_catalog(path: str) -> bool:
    """A non-Python file under a locales/, i18n/, translations/ ... directory."""
    pure = PurePosixPath(path)
    return pure.suffix.lower() not in PYTHON_SUFFIXES and any(p.lower() in CATALOG_DIRS for p in pure.parts[:-1])


@dataclass
class ScanStats:
    """What a scan covered: honest denominators for the report and the benchmark."""

    files_scanned: int = 0
    files_skipped: int = 0
    bytes_scanned: int = 0
    files_parsed: int = 0

    def add(self, other: ScanStats) -> None:
        self.files_scanned += other.files_scanned
        self.files_skipped += other.files_skipped
        self.bytes_scanned += other.bytes_scanned
        self.files_parsed += other.files_parsed


@dataclass
class ScanResult:
    """Findings split by suppression state, plus coverage stats."""

    findings: list[Finding] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    stats: ScanStats = field(default_factory=ScanStats)

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            (self.suppressed if finding.suppressed_by else self.findings).append(finding)


def _dedupe(hits: list[Hit]) -> list[Hit]:
    """Keep, per line, the most specific rule for each overlapping span."""
    by_line: dict[int, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_line[hit.line].append(hit)
    kept: list[Hit] = []
    for line in sorted(by_line):
        chosen: list[Hit] = []
        for hit in sorted(by_line[line], key=lambda h: (RULES[h.rule_id].priority, h.start)):
            h_end = float("inf") if hit.end is None else hit.end
            overlaps = False
            for other in chosen:
                o_end = float("inf") if other.end is None else other.end
                same_point = hit.start == other.start and hit.end == other.end
                if hit.message is not None or other.message is not None:
                    overlaps = hit.rule_id == other.rule_id
                elif same_point or (hit.start < o_end and other.start < h_end):
                    overlaps = True
                if overlaps:
                    break
            if not overlaps:
                chosen.append(hit)
        kept.extend(sorted(chosen, key=lambda h: h.start))
    return kept


def detect(text: str, path: str, *, tracked: bool | None = None) -> tuple[list[Hit], TextIndex, bool]:
    """All raw hits for ``text`` (named ``path``); also returns whether it was parsed."""
    index = TextIndex(text)
    name = PurePosixPath(path).name
    env_kind = dotenv.dotenv_kind(name)
    hits: list[Hit] = []
    if env_kind == "env":
        hits.extend(dotenv.detect_dotenv_file(tracked))
    prefiltered = default_prefilter().run(index.lower)
    # Formats without a keyword (Twilio's SK...) run on every file.
    hits.extend(vendors.detect_vendor_formats(index, prefiltered))
    if prefiltered.empty and env_kind != "template":
        return _dedupe(hits), index, False

    hits.extend(patterns.detect_formats(index, prefiltered))
    parsed = False
    if PurePosixPath(path).suffix.lower() in PYTHON_SUFFIXES:
        if prefiltered.groups & AST_GROUPS:
            tree = python_ast.parse_python(text)
            if tree is not None:
                parsed = True
                focus = sorted(
                    {index.line_of(o) for g in AST_FOCUS_GROUPS for o in prefiltered.offsets.get(g, ())}
                )
                hits.extend(python_ast.check_python(index, tree, focus))
            else:
                hits.extend(patterns.detect_text_assignments(index, prefiltered, quoted_only=True))
                hits.extend(patterns.detect_airflow_conn_text(index, prefiltered))
    elif not is_translation_catalog(path):
        unquoted_ok = (
            env_kind is not None
            or PurePosixPath(path).suffix.lower() in UNQUOTED_VALUE_SUFFIXES
            or name.lower() in UNQUOTED_VALUE_NAMES
        )
        hits.extend(patterns.detect_text_assignments(index, prefiltered, quoted_only=not unquoted_ok))
        hits.extend(patterns.detect_airflow_conn_text(index, prefiltered))
        if env_kind == "template":
            hits.extend(dotenv.detect_template_values(index))
    return _dedupe(hits), index, parsed


def findings_from_hits(hits: Sequence[Hit], index: TextIndex, path: str, commit: str | None = None) -> list[Finding]:
    """Turn hits into findings: redacted excerpts, fingerprints, pragma state."""
    by_line: dict[int, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_line[hit.line].append(hit)
    occurrences: Counter[tuple[str, str]] = Counter()
    findings: list[Finding] = []
    for hit in hits:
        line_text = index.line_text(hit.line)
        if hit.message is not None:
            redacted = hit.message
        else:
            redacted = redact_line(line_text, by_line[hit.line])
        key = (hit.rule_id, " ".join(redacted.split()))
        occurrence = occurrences[key]
        occurrences[key] += 1
        rule = RULES[hit.rule_id]
        allowed = is_allowed_by_pragma(hit.rule_id, line_text, index.line_text(hit.line - 1))
        findings.append(
            Finding(
                rule_id=hit.rule_id,
                severity=rule.severity.value,
                title=rule.title,
                path=path,
                line=hit.line,
                column=hit.start + 1,
                excerpt=shorten(redacted),
                fingerprint=fingerprint(hit.rule_id, path, redacted, occurrence),
                commit=commit,
                suppressed_by="pragma" if allowed else None,
            )
        )
    return findings


def scan_text(text: str, path: str, *, tracked: bool | None = None, commit: str | None = None) -> list[Finding]:
    """Findings for one file's text (pragma-suppressed ones are marked, not dropped)."""
    hits, index, _parsed = detect(text, path, tracked=tracked)
    return findings_from_hits(hits, index, path, commit)


def _scan_chunk(args: tuple[list[ScanTarget], int]) -> ScanResult:
    targets, max_bytes = args
    result = ScanResult()
    for target in targets:
        text = read_text(target.path, max_bytes)
        if text is None:
            result.stats.files_skipped += 1
            continue
        result.stats.files_scanned += 1
        result.stats.bytes_scanned += len(text)
        hits, index, parsed = detect(text, target.display, tracked=target.tracked)
        result.stats.files_parsed += int(parsed)
        if hits:
            result.extend(findings_from_hits(hits, index, target.display))
    return result


def resolve_jobs(jobs: int) -> int:
    """0 means one worker per CPU."""
    return max(1, os.cpu_count() or 1) if jobs == 0 else max(1, jobs)


def scan_targets(targets: Sequence[ScanTarget], *, jobs: int = 1, max_bytes: int = DEFAULT_MAX_BYTES) -> ScanResult:
    """Scan files, in ``jobs`` worker processes when that is more than one."""
    jobs = resolve_jobs(jobs)
    if jobs == 1 or len(targets) < 64:
        return _scan_chunk((list(targets), max_bytes))
    chunk_size = max(16, min(256, len(targets) // (jobs * 8) or 1))
    chunks = [(list(targets[i: i + chunk_size]), max_bytes) for i in range(0, len(targets), chunk_size)]
    total = ScanResult()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_scan_chunk, chunks):
            total.findings.extend(part.findings)
            total.suppressed.extend(part.suppressed)
            total.stats.add(part.stats)
    return total


def apply_baseline(result: ScanResult, fingerprints: set[str]) -> ScanResult:
    """Move findings whose fingerprint is in the baseline to ``suppressed``."""
    kept: list[Finding] = []
    for finding in result.findings:
        if finding.fingerprint in fingerprints:
            result.suppressed.append(finding.model_copy(update={"suppressed_by": "baseline"}))
        else:
            kept.append(finding)
    result.findings = kept
    return result
