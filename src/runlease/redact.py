"""Mask leased secret values in log text.

Every value the broker hands out is registered here, so that it cannot leak
through a log line, a traceback or a stack dump. All registered values (and the
encoded forms in which they typically show up in logs) go into ONE
Aho-Corasick automaton, so masking costs one pass over the text no matter how
many secrets a long-running worker has collected. Airflow's own masker instead
joins every secret into one regex alternation, recompiled on each new secret;
its cost grows with the number of secrets (see docs/benchmarks.md).

Why a bytes automaton (``ahocorasick_rs.BytesAhoCorasick``) and not the
``str`` one, measured by ``benchmarks/bench_redact.py`` (results in
docs/benchmarks.md): 10,000 random 24-char secrets, 2 MB Airflow-like task
log (~5 % non-ASCII lines, one planted secret per ~2 KB), 2-core AMD EPYC
shared with other jobs, Python 3.11.7, ahocorasick-rs 1.0.3; full redact
(search + splice), best of runs spread over >= 2 s:

    ==============================================  ========  ===========
    candidate                                        MB/s      build s
    ==============================================  ========  ===========
    pyahocorasick ``Automaton.iter`` (str)            43       0.074
    ahocorasick-rs ``AhoCorasick`` (str)              172       0.058
    ahocorasick-rs ``BytesAhoCorasick`` (this one)    193       0.049 [*]
    Airflow 3.3 ``SecretsMasker`` (regex)             0.026     > 60 [**]
    ==============================================  ========  ===========

    [*]  whole registration: add_many (computing variants) + build.
    [**] its add_mask loop registered 1,442 of the 10,000 in 60 s; its MB/s
         was measured with the same patterns loaded in one re.compile, on the
         1.5 MB it got through in 60 s.

In every run bytes beat str at every N: by 5-25 % at 1,000 and 10,000 secrets,
by 40-90 % at 10.
The str automaton searches UTF-8 internally and translates every match offset
back to code points; encoding once and splicing bytes is cheaper even with the
round trip. (The issue measured str ~95 / bytes ~200 MB/s; the ranking holds.)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

import ahocorasick_rs

__all__ = [
    "Redactor",
    "RedactingFilter",
    "default_redactor",
    "install_redacting_filter",
]

# Lone surrogates (e.g. from ``os.fsdecode`` of undecodable file names) are
# legal in a Python ``str`` but not in strict UTF-8. "surrogatepass" encodes
# them as ordinary 3-byte sequences, so every ``str`` round-trips exactly and
# encoding never raises.
_ENC = "utf-8"
_ERRORS = "surrogatepass"


def _variants(value: str) -> list[str]:
    """Return the value plus the forms in which it commonly appears in logs.

    A password inside a connection URI is percent-encoded, a token inside a
    logged JSON payload is JSON-escaped, a value inside a logged dict or
    tuple is ``repr``-escaped. Masking only the raw value would leave those.
    """
    return [
        value,
        # surrogatepass: a lone surrogate must not make add() raise.
        quote(value, safe="", errors=_ERRORS),
        quote_plus(value, errors=_ERRORS),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
    ]


class Redactor:
    """Replace every registered secret (and its encoded forms) in text.

    Values shorter than ``min_length`` characters are ignored entirely: a
    short value such as ``"abc"`` or ``"true"`` also occurs in ordinary log
    text, and masking it everywhere would destroy the logs while protecting
    little (a 4-character secret is weak anyway). Airflow's masker applies
    the same rule with the same default of 5.

    Thread-safe: ``add`` only records patterns under a lock and marks the
    automaton stale; the next ``redact`` rebuilds it once (lazily, so a burst
    of ``add`` calls costs one build). Built automatons are immutable, so
    ``redact`` runs concurrently with other ``redact`` and ``add`` calls.
    """

    __slots__ = ("_min_length", "_replacement", "_replacement_bytes", "_lock", "_values", "_patterns",
                 "_automaton", "_dirty")

    def __init__(self, min_length: int = 5, replacement: str = "***") -> None:
        if min_length < 1:
            # An empty pattern would match everywhere (and ahocorasick_rs rejects it).
            raise ValueError("min_length must be >= 1")
        self._min_length = min_length
        self._replacement = replacement
        self._replacement_bytes = replacement.encode(_ENC, _ERRORS)
        self._lock = threading.Lock()
        self._values: set[str] = set()
        # dict used as an insertion-ordered set; keys are UTF-8 encoded patterns.
        self._patterns: dict[bytes, None] = {}
        self._automaton: ahocorasick_rs.BytesAhoCorasick | None = None
        self._dirty = False

    def __repr__(self) -> str:
        # Never include values: a Redactor may end up in a log line or a traceback.
        return f"<Redactor values={len(self._values)} patterns={len(self._patterns)}>"

    __str__ = __repr__

    def __len__(self) -> int:
        """Number of distinct registered values (variants not counted)."""
        return len(self._values)

    @property
    def pattern_count(self) -> int:
        """Number of distinct patterns in the automaton (values plus distinct variants)."""
        return len(self._patterns)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self._values

    def add(self, value: str) -> None:
        """Register one secret value (and its encoded variants)."""
        self.add_many((value,))

    def add_many(self, values: Iterable[str]) -> None:
        """Register many secret values; cheaper than repeated ``add`` under contention."""
        min_length = self._min_length
        new: list[bytes] = []
        accepted: list[str] = []
        for value in values:
            if not isinstance(value, str):
                # Name the type only: the object itself may be the secret.
                raise TypeError(f"Redactor accepts str values, got {type(value).__name__}")
            if len(value) < min_length:
                continue
            accepted.append(value)
            for variant in _variants(value):
                if len(variant) >= min_length:
                    new.append(variant.encode(_ENC, _ERRORS))
        if not accepted:
            return
        with self._lock:
            self._values.update(accepted)
            before = len(self._patterns)
            self._patterns.update(dict.fromkeys(new))
            if len(self._patterns) != before:
                self._dirty = True

    def _current(self) -> ahocorasick_rs.BytesAhoCorasick | None:
        """Return an automaton covering every value whose ``add`` has returned."""
        if self._dirty:
            with self._lock:
                if self._dirty:
                    self._automaton = ahocorasick_rs.BytesAhoCorasick(
                        list(self._patterns),
                        # Leftmost-longest: when one secret contains another
                        # ("abcdefgh1234" vs "abcdefgh12"), the longer one wins
                        # and is masked whole, instead of leaving a "34" tail.
                        matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
                    )
                    self._dirty = False
        return self._automaton

    def _splice(self, data: bytes, matches: list[tuple[int, int, int]]) -> bytes:
        parts: list[bytes] = []
        prev = 0
        repl = self._replacement_bytes
        for _, start, end in matches:
            parts.append(data[prev:start])
            parts.append(repl)
            prev = end
        parts.append(data[prev:])
        return b"".join(parts)

    def redact(self, text: str) -> str:
        """Return ``text`` with every registered value replaced.

        Matches are non-overlapping, leftmost-longest. Known limit: if two
        *different* secrets overlap in the text (the end of one is the start
        of the other), the part of the second one past the first match stays
        visible; neither full value does.
        """
        automaton = self._current()
        if automaton is None:
            return text
        data = text.encode(_ENC, _ERRORS)
        matches = automaton.find_matches_as_indexes(data)
        if not matches:
            return text
        # Splicing bytes and decoding is safe: patterns and haystack are both
        # valid UTF-8, and UTF-8 is self-synchronising. A pattern starts with a
        # lead byte, which can never equal a continuation byte (10xxxxxx), so a
        # match can only start at a character boundary; it then covers whole
        # characters, so it also ends on one. The spliced bytes are valid UTF-8.
        return self._splice(data, matches).decode(_ENC, _ERRORS)

    def redact_bytes(self, data: bytes) -> bytes:
        """Mask the UTF-8 forms of registered values in raw bytes (e.g. a log file)."""
        automaton = self._current()
        if automaton is None:
            return data
        matches = automaton.find_matches_as_indexes(data)
        if not matches:
            return data
        return self._splice(bytes(data), matches)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the final text of each record.

    It renders the message first (``msg % args``) and masks the result, so a
    secret passed as an argument (``log.info("pw=%s", pw)``) is caught; then
    it clears ``args`` so no handler formats the raw values again. Tracebacks
    are rendered once into ``record.exc_text`` and masked there: the standard
    ``logging.Formatter`` reuses ``exc_text`` when it is set. (A formatter
    that renders ``exc_info`` itself bypasses this.)

    Never raises: a filter exception would make the logging call itself fail
    and could take the application down. On a broken record it masks what it
    can and lets the record through.
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor.redact
        try:
            message = record.getMessage()
        except Exception:
            # msg/args do not format (wrong arg count, broken __str__...):
            # leave them for the handler's error path, masked where possible.
            self._redact_parts(record)
        else:
            try:
                record.msg = redact(message)
                record.args = ()
            except Exception:
                pass
        try:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        except Exception:
            pass
        try:
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:
            pass
        return True

    def _redact_parts(self, record: logging.LogRecord) -> None:
        redact = self.redactor.redact
        try:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        except Exception:
            pass


def install_redacting_filter(redactor: Redactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach a :class:`RedactingFilter` to every handler of ``logger`` (default: root).

    Handlers, not the logger: a filter on a logger only sees records logged
    *on that logger*; records from child loggers propagate straight to the
    parent's handlers and skip the parent logger's filters. A filter on the
    handler sees every record the handler emits. Handlers added after this
    call are not covered; call it again (handlers already carrying a filter
    for the same redactor are skipped).
    """
    target = logger if logger is not None else logging.getLogger()
    flt = RedactingFilter(redactor)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) and f.redactor is redactor for f in handler.filters):
            handler.addFilter(flt)
    return flt


_default: Redactor | None = None
_default_lock = threading.Lock()


def default_redactor() -> Redactor:
    """The process-wide redactor that the broker registers every leased value with."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Redactor()
    return _default
