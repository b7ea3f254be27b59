"""The audit hash chain: HMAC-linked events plus an anchor kept outside the database.

Each event's ``chain`` is ``HMAC(K, previous_chain || canonical(event))``
where ``canonical`` covers every column including ``seq``, and ``K`` is
derived from a KEK (the event records which one in ``key_id``). Without the
KEK nobody can compute a valid chain value, so editing, deleting, inserting
or reordering rows breaks verification at the first affected sequence
number.

A chain alone cannot show that its *tail* was cut off: the shorter chain is
still valid. So every append also writes the latest ``(seq, chain)`` to an
anchor file beside the key file, signed with a key derived from the KEK
(:class:`AnchorSigner`). ``verify`` checks the database against it: on the
local ledger a missing, empty, unsigned, forged or older anchor fails as
soon as the store holds any event, version or lease. What an attacker who
can write *both* the database and the anchor file (but has no KEK) can
still do: drop the newest events and put back an older, genuine anchor
file they copied earlier. Catching that needs an anchor they cannot write
(a remote append-only sink, or a copy shipped elsewhere); docs/security.md
says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runlease.keys.crypto import Keyring, mac
from runlease.models import AuditEvent

log = logging.getLogger(__name__)

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
    """The newest ``(seq, chain)`` recorded outside the database.

    ``problem`` is set (and ``seq`` is -1) when the file holds something that is
    not a genuine anchor: torn, unreadable, unsigned, or signed with a key that
    is not ours.
    """

    seq: int
    chain: str
    problem: str = ""


#: The anchor is one fixed-size record, rewritten in place: a short JSON object
#: (seq, chain, the KEK id and an HMAC over all of it), padded to a constant length.
ANCHOR_RECORD_BYTES = 384
ANCHOR_FORMAT = "runlease-anchor/v2"


class AnchorSigner:
    """Signs and checks anchor records with a key derived from the KEK (``Keyring.anchor_key``).

    Why signed: the anchor sits in the home, next to the database it vouches
    for. Unsigned, anyone who could write the home could delete it, empty it,
    or write ``seq 0`` and make a truncated (even emptied) log verify. Signed,
    they can only put back an *older genuine* anchor they saved earlier,
    which is the limit docs/security.md states. ``scope`` (the store or
    ledger id) stops an anchor from another store being accepted.
    """

    def __init__(self, keyring: Keyring, scope: str) -> None:
        self.keyring = keyring
        self.scope = scope
        #: The last record this signer wrote, and the anchor in it. The local ledger reads the
        #: anchor back before every advance; when the bytes on disk are exactly the bytes it
        #: signed, parsing and re-checking the MAC would give the same answer (same bytes, same
        #: immutable keyring, same scope), so it is skipped. Any other bytes are fully checked.
        self._last_written: tuple[bytes, Anchor] | None = None

    def _mac(self, kid: str, seq: int, chain: str) -> str:
        message = f"{ANCHOR_FORMAT}|{self.scope}|{seq}|{chain}".encode()
        return mac(self.keyring.anchor_key(kid), message).hex()

    def encode(self, anchor: Anchor) -> bytes:
        kid = self.keyring.active_id
        doc = {"format": ANCHOR_FORMAT, "seq": anchor.seq, "chain": anchor.chain, "key_id": kid,
               "mac": self._mac(kid, anchor.seq, anchor.chain)}
        record = json.dumps(doc).encode().ljust(ANCHOR_RECORD_BYTES - 1) + b"\n"
        self._last_written = (record, Anchor(anchor.seq, anchor.chain))
        return record

    def decode(self, raw: bytes) -> Anchor:
        """The anchor in ``raw``; a record that is not a genuine signed anchor has ``problem`` set."""
        last = self._last_written
        if last is not None and raw == last[0]:
            return last[1]
        try:
            doc = json.loads(raw)
            seq, chain = int(doc["seq"]), str(doc["chain"])
        except (ValueError, KeyError, TypeError):
            return Anchor(-1, "", "is unreadable or torn")
        if doc.get("format") != ANCHOR_FORMAT or "mac" not in doc:
            return Anchor(-1, "", "is not signed (written by an older runlease, or forged)")
        kid = str(doc.get("key_id"))
        if kid not in self.keyring:
            return Anchor(-1, "", f"is signed with master key {kid[:40]}, which is not loaded")
        if not hmac.compare_digest(self._mac(kid, seq, chain), str(doc["mac"])):
            return Anchor(-1, "", "has a signature that does not match (forged or edited)")
        return Anchor(seq, chain)


def _open_anchor(path: Path, flags: int) -> int:
    """Open the anchor file itself, never a symlink planted in its place (O_NOFOLLOW)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def read_anchor(path: Path, signer: AnchorSigner) -> Anchor | None:
    """The anchor on disk (None: no anchor file, or an empty one; ``problem`` set: not genuine)."""
    try:
        fd = _open_anchor(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as err:
        return Anchor(-1, "", f"cannot be opened ({err.strerror}; a symlink is refused)")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        raw = os.pread(fd, ANCHOR_RECORD_BYTES, 0)
    finally:
        os.close(fd)
    return signer.decode(raw) if raw.strip() else None


def raw_anchor(path: Path) -> bytes | None:
    """The anchor file's record as it is (not locked, not checked), None if it cannot be opened.

    Only for the one-off upgrade checks, which look at the record's format, not its signature.
    """
    try:
        fd = _open_anchor(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, ANCHOR_RECORD_BYTES, 0)
    finally:
        os.close(fd)


def read_legacy_anchor(path: Path) -> Anchor | None:
    """A version-1 (unsigned) anchor, read once when a store is upgraded; None if absent or not one."""
    raw = raw_anchor(path)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        seq, chain = int(doc["seq"]), str(doc["chain"])
    except (ValueError, KeyError, TypeError):
        return None
    check = hashlib.sha256(f"runlease-anchor|{seq}|{chain}".encode()).hexdigest()[:16]
    return Anchor(seq, chain) if doc.get("check") == check else None


def write_anchor(path: Path, anchor: Anchor, signer: AnchorSigner) -> None:
    """Overwrite the anchor unconditionally (0600 like the key file); re-anchoring and tests use this."""
    fd = _open_anchor(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, signer.encode(anchor), 0)
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
                fd = _open_anchor(path, os.O_RDWR | os.O_CREAT)
                self._fds[key] = fd
            return fd


_handles = _AnchorHandles()


def advance_anchor(path: Path, anchor: Anchor, signer: AnchorSigner, *, previous_seq: int | None = None) -> None:
    """Move the anchor forward to ``anchor`` unless another process already went further.

    Called *after* the events are committed: a crash in between leaves the
    anchor behind the log, never ahead of it. The flock makes
    read-compare-write atomic between concurrent writers.

    ``previous_seq`` (the chain's tip before this transaction) makes the move
    strict, for a ledger whose every event passes through this anchor (the
    local one): the anchor only moves from exactly that tip (or is created
    with the very first event). A missing, forged, or older anchor is left as
    it is, so ``audit verify`` keeps reporting it instead of the next event
    quietly covering it up; ``runlease audit verify --reanchor`` is the
    deliberate, audited way out. Without ``previous_seq`` (per-machine anchors
    of a shared ledger) the anchor moves forward from wherever it is.
    Never raises: the events are committed already; a problem shows up in
    ``audit verify``.
    """
    try:
        fd = _handles.fd(path)
    except OSError as err:
        log.warning("audit anchor %s cannot be opened (%s); `runlease audit verify` will report it", path,
                    err.strerror)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        raw = os.pread(fd, ANCHOR_RECORD_BYTES, 0)
        current = signer.decode(raw) if raw.strip() else None
        if previous_seq is None:
            move = current is None or current.problem != "" or current.seq < anchor.seq
        elif current is None:
            move = previous_seq == 0
        else:
            move = not current.problem and current.seq == previous_seq and anchor.seq > current.seq
        if move:
            os.pwrite(fd, signer.encode(anchor), 0)
        elif current is None or current.problem or current.seq < anchor.seq:
            log.warning("audit anchor %s was not advanced to event %d: it is missing, not genuine or behind; "
                        "`runlease audit verify` reports it", path, anchor.seq)
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
    *,
    anchor_required: bool = False,
    anchor_at_tip: bool = False,
) -> VerifyResult:
    """Walk events in seq order and report the first one that does not link.

    ``key_for`` returns the HMAC key for a ``key_id`` or None when that KEK is
    not loaded (reported as a failure: an unverifiable event is not verified).
    ``anchor_required``: a missing or empty anchor is a failure (the store
    holds something an anchor must vouch for). ``anchor_at_tip``: the anchor
    must record the newest event, not an older one.
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
    if anchor is None:
        if anchor_required:
            return VerifyResult(False, checked, None,
                                "audit anchor is missing or empty, but the store holds audit events, versions or "
                                "leases (deleted or emptied outside runlease?)")
        return VerifyResult(True, checked)
    if anchor.problem:
        return VerifyResult(False, checked, None, f"audit anchor file {anchor.problem}")
    if anchor.seq > last_seq:
        return VerifyResult(
            False, checked, last_seq + 1,
            f"log truncated: anchor records {anchor.seq} events, database holds {last_seq}",
        )
    if anchor.seq and not hmac.compare_digest(last_chain_by_seq.get(anchor.seq, ""), anchor.chain):
        return VerifyResult(False, checked, anchor.seq, "event does not match the anchor recorded outside the database")
    if anchor_at_tip and anchor.seq < last_seq:
        return VerifyResult(
            False, checked, anchor.seq + 1,
            f"audit anchor is older than the log: it records {anchor.seq} events, the database holds {last_seq} "
            "(anchor rolled back, or a crash between commit and anchor update: check, then "
            "`runlease audit verify --reanchor`)",
        )
    return VerifyResult(True, checked)
