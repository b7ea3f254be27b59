"""The audit hash chain: HMAC-linked events plus an anchor kept outside the database.

Each event's ``chain`` is ``HMAC(K, previous_chain || canonical(event))``
where ``canonical`` covers every column including ``seq``, and ``K`` is
derived from a KEK (the event records which one in ``key_id``). Without the
KEK nobody can compute a valid chain value, so editing, deleting, inserting
or reordering rows breaks verification at the first affected sequence
number.

A chain alone cannot show that its *tail* was cut off: the shorter chain is
still valid. So every append also writes the latest ``(seq, chain)`` to an
anchor file beside the key file. ``verify`` checks the database against it.
What an attacker who can write *both* the database and the anchor file (but
has no KEK) can still do: drop the newest events and rewrite the anchor to
an older, genuine ``(seq, chain)`` pair. Catching that needs an anchor they
cannot write (a remote append-only sink, or a copy of the anchor shipped
elsewhere); docs/security.md says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runlease.crypto import mac
from runlease.models import AuditEvent

#: Columns covered by the chain, in a fixed order (``chain`` itself excluded).
CHAINED_FIELDS: tuple[str, ...] = (
    "seq", "ts", "action", "outcome", "path", "version", "lease_id", "orchestrator", "pipeline",
    "run_id", "task_id", "try_number", "map_index", "principal", "detail", "key_id",
)


def genesis(store_id: str) -> str:
    """The chain value before event 1; binding it to the store stops transplanting a log."""
    return hashlib.sha256(f"runlease-audit-genesis|{store_id}".encode()).hexdigest()


def canonical(row: dict[str, Any]) -> bytes:
    """A stable byte encoding of one event's chained columns."""
    values = []
    for name in CHAINED_FIELDS:
        value = row.get(name)
        if name == "detail" and not isinstance(value, str):
            value = json.dumps(value or {}, sort_keys=True, separators=(",", ":"))
        values.append(value)
    return json.dumps(values, separators=(",", ":"), default=str).encode()


def link(key: bytes, previous: str, row: dict[str, Any]) -> str:
    return mac(key, previous.encode() + b"\n" + canonical(row)).hex()


def event_row(event: AuditEvent) -> dict[str, Any]:
    """The flat column dict of an event, as stored and as chained."""
    row = event.model_dump(mode="json", exclude={"chain"})
    row["detail"] = json.dumps(event.detail, sort_keys=True, separators=(",", ":"), default=str)
    return row


@dataclass(frozen=True)
class Anchor:
    seq: int
    chain: str


#: The anchor is one fixed-size record, rewritten in place: a short JSON object
#: (seq, chain, and a check over both so a torn write reads as "unreadable",
#: never as a different genuine-looking anchor), padded to a constant length.
ANCHOR_RECORD_BYTES = 192


def _anchor_check(seq: int, chain: str) -> str:
    return hashlib.sha256(f"runlease-anchor|{seq}|{chain}".encode()).hexdigest()[:16]


def _encode_anchor(anchor: Anchor) -> bytes:
    doc = {"seq": anchor.seq, "chain": anchor.chain, "check": _anchor_check(anchor.seq, anchor.chain)}
    return json.dumps(doc).encode().ljust(ANCHOR_RECORD_BYTES - 1) + b"\n"


def _decode_anchor(raw: bytes) -> Anchor:
    try:
        doc = json.loads(raw)
        anchor = Anchor(int(doc["seq"]), str(doc["chain"]))
        if doc.get("check") != _anchor_check(anchor.seq, anchor.chain):
            return Anchor(-1, "unreadable")
        return anchor
    except (ValueError, KeyError, TypeError):
        return Anchor(-1, "unreadable")


def read_anchor(path: Path) -> Anchor | None:
    """The anchor on disk (None: no anchor yet; seq -1: unreadable or torn)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return Anchor(-1, "unreadable")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        raw = os.pread(fd, ANCHOR_RECORD_BYTES, 0)
    finally:
        os.close(fd)
    return _decode_anchor(raw) if raw.strip() else None


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Overwrite the anchor unconditionally (0600 like the key file); tools and tests use this."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, _encode_anchor(anchor), 0)
        os.ftruncate(fd, ANCHOR_RECORD_BYTES)
    finally:
        os.close(fd)


class _AnchorHandles:
    """One open descriptor per anchor file and process (reopened after a fork).

    Opening, locking and renaming a temp file on every event cost more than the
    SQLite commit it vouches for; an fd kept open and a fixed-size record
    rewritten in place under ``flock`` cost two syscalls.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def fd(self, path: Path) -> int:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share the parent's open file
                self._fds, self._pid = {}, os.getpid()
            key = str(path)
            fd = self._fds.get(key)
            if fd is not None and os.fstat(fd).st_nlink == 0:  # the file was removed: start a new one
                os.close(fd)
                fd = None
            if fd is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._fds[key] = fd
            return fd


_handles = _AnchorHandles()


def advance_anchor(path: Path, anchor: Anchor) -> None:
    """Move the anchor forward to ``anchor`` unless another process already went further.

    Called *after* the events are committed: a crash in between leaves the
    anchor behind the log (a little less tail protection), never ahead of it
    (which would report a truncation that did not happen). The flock makes
    read-compare-write atomic between concurrent writers.
    """
    fd = _handles.fd(path)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        raw = os.pread(fd, ANCHOR_RECORD_BYTES, 0)
        current = _decode_anchor(raw) if raw.strip() else None
        if current is None or current.seq < anchor.seq:
            os.pwrite(fd, _encode_anchor(anchor), 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"audit chain OK: {self.checked} events verified"
        return f"audit chain BROKEN at seq {self.first_bad_seq}: {self.reason}"


def verify_chain(
    rows: Iterable[dict[str, Any]],
    key_for: Callable[[str], bytes | None],
    start: str,
    anchor: Anchor | None,
) -> VerifyResult:
    """Walk events in seq order and report the first one that does not link.

    ``key_for`` returns the HMAC key for a ``key_id`` or None when that KEK is
    not loaded (reported as a failure: an unverifiable event is not verified).
    """
    previous = start
    expected_seq = 1
    checked = 0
    last_chain_by_seq: dict[int, str] = {}
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            return VerifyResult(False, checked, expected_seq, f"event {expected_seq} is missing (next stored is {seq})")
        key = key_for(str(row["key_id"]))
        if key is None:
            return VerifyResult(False, checked, seq, f"event signed with key {row['key_id']} which is not loaded")
        if not hmac.compare_digest(link(key, previous, row), str(row["chain"])):
            return VerifyResult(False, checked, seq, "event was edited, inserted or reordered (chain mismatch)")
        previous = str(row["chain"])
        if anchor is not None and seq == anchor.seq:
            last_chain_by_seq[seq] = previous
        checked += 1
        expected_seq += 1
    last_seq = expected_seq - 1
    if anchor is not None:
        if anchor.seq < 0:
            return VerifyResult(False, checked, None, "audit anchor file is unreadable")
        if anchor.seq > last_seq:
            return VerifyResult(
                False, checked, last_seq + 1,
                f"log truncated: anchor records {anchor.seq} events, database holds {last_seq}",
            )
        if anchor.seq and not hmac.compare_digest(last_chain_by_seq.get(anchor.seq, ""), anchor.chain):
            return VerifyResult(False, checked, anchor.seq, "event does not match the anchor recorded outside the database")
    return VerifyResult(True, checked)
