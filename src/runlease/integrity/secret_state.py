"""A signed digest of every secret row's state, kept in the home: catches a secret rolled back.

Why: a row MAC shows a row is genuine, not that it is the newest. Someone who
saved an earlier copy of the database could put back all of one secret's
rows from that moment (CURRENT back on a retired version, a deleted secret
live again) and every MAC would verify. The audit chain lives in the same
file, so it cannot say which state is the newest by itself.

So the store keeps, *outside* the database, one fixed-size record: the sum
(mod 2**256) of ``HMAC(K, path, row MAC)`` over every secret row, signed with
a key derived from the KEK. Each write that re-MACs a secret row moves the
sum by ``- h(old row) + h(new row)`` after its commit (inside the writer
turn, like the audit anchor), so a write costs one small file rewrite,
whatever the number of secrets. ``runlease audit verify`` (and ``doctor``)
recompute the sum from the rows: putting back any earlier state of any
secret's row changes it. It names no secret (a sum cannot), so the message
points at ``runlease audit show``.

Limits (docs/security.md): it is checked by ``audit verify``/``doctor``, not
on every read (that would cost a pass over all secrets); a crash between a
commit and the record update leaves the record behind, which looks exactly
like a rollback (``runlease audit verify --reanchor`` re-records it,
audited); an attacker who can also put back an older copy of this file (the
user or root) is not caught, as for the anchor.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runlease.keys.crypto import Keyring, mac

log = logging.getLogger(__name__)

STATE_FORMAT = "runlease-secret-state/v1"
SECRET_STATE_INFO = b"runlease/v1/secret-state"
_MODULUS = 1 << 256
_RECORD_BYTES = 512


def secret_state_path(store_file: Path) -> Path:
    return Path(f"{store_file}.state")


@dataclass(frozen=True)
class SecretState:
    """The recorded sum and row count; ``problem`` set when the file is not a genuine record."""

    total: int
    count: int
    key_id: str = ""
    problem: str = ""


class SecretStateRecorder:
    """Reads, writes and moves the record of one store (``scope``)."""

    def __init__(self, keyring: Keyring, scope: str, path: Path) -> None:
        self.keyring = keyring
        self.scope = scope
        self.path = path

    # -- the digest -------------------------------------------------------------

    def _key(self, kid: str) -> bytes:
        return self.keyring.derived_key(kid, SECRET_STATE_INFO)

    def term(self, kid: str, path: str, row_mac: str | None) -> int:
        """One secret row's share of the sum under KEK ``kid`` (a row without a MAC has none)."""
        if row_mac is None:
            return 0
        message = json.dumps([STATE_FORMAT, self.scope, path, row_mac], separators=(",", ":")).encode()
        return int.from_bytes(mac(self._key(kid), message), "big")

    def compute(self, rows: Iterable[tuple[str, str | None]], kid: str | None = None) -> SecretState:
        """The record ``rows`` call for, under ``kid`` (default: the active KEK)."""
        kid = kid or self.keyring.active_id
        total, count = 0, 0
        for path, row_mac in rows:
            total = (total + self.term(kid, path, row_mac)) % _MODULUS
            count += row_mac is not None
        return SecretState(total, count, kid)

    # -- the file -----------------------------------------------------------------

    def _sign(self, kid: str, total: int, count: int) -> str:
        message = json.dumps([STATE_FORMAT, self.scope, f"{total:064x}", count], separators=(",", ":")).encode()
        return mac(self._key(kid), message).hex()

    def _encode(self, state: SecretState) -> bytes:
        kid = state.key_id
        doc = {"format": STATE_FORMAT, "sum": f"{state.total:064x}", "count": state.count, "key_id": kid,
               "mac": self._sign(kid, state.total, state.count)}
        return json.dumps(doc).encode().ljust(_RECORD_BYTES - 1) + b"\n"

    def _decode(self, raw: bytes) -> SecretState | None:
        if not raw.strip():
            return None
        try:
            doc = json.loads(raw)
            total, count, kid = int(doc["sum"], 16), int(doc["count"]), str(doc["key_id"])
        except (ValueError, KeyError, TypeError):
            return SecretState(0, 0, problem="is unreadable or torn")
        if doc.get("format") != STATE_FORMAT or kid not in self.keyring:
            return SecretState(0, 0, problem="is not signed with a loaded master key")
        if not hmac.compare_digest(self._sign(kid, total, count), str(doc.get("mac"))):
            return SecretState(0, 0, problem="has a signature that does not match (forged or edited)")
        return SecretState(total, count, kid)

    def _open(self, flags: int) -> int:
        return os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def read(self) -> SecretState | None:
        """The record (None: no file or an empty one)."""
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as err:
            return SecretState(0, 0, problem=f"cannot be opened ({err.strerror}; a symlink is refused)")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._decode(os.pread(fd, _RECORD_BYTES, 0))
        finally:
            os.close(fd)

    def write(self, state: SecretState) -> None:
        """Overwrite the record (a new store, a deliberate ``--reanchor``)."""
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, self._encode(state), 0)
            os.ftruncate(fd, _RECORD_BYTES)
        finally:
            os.close(fd)

    def move(self, changes: dict[str, tuple[str | None, str]]) -> None:
        """After a commit: apply ``path -> (row MAC before, row MAC after)`` to the record.

        A missing or not genuine record is left as it is (``audit verify``
        reports it; the next write never quietly covers it up). Never raises:
        the write is committed already.
        """
        try:
            fd = self._open(os.O_RDWR)
        except OSError as err:
            log.warning("secret state record %s cannot be opened (%s); `runlease audit verify` will report it",
                        self.path, err.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self._decode(os.pread(fd, _RECORD_BYTES, 0))
            if current is None or current.problem:
                log.warning("secret state record %s is missing or not genuine; not moved", self.path)
                return
            kid, total, count = current.key_id, current.total, current.count
            for path, (before, after) in changes.items():
                total = (total - self.term(kid, path, before) + self.term(kid, path, after)) % _MODULUS
                count += 1 if before is None else 0
            os.pwrite(fd, self._encode(SecretState(total, count, kid)), 0)
        finally:
            os.close(fd)

    def check(self, recorded: SecretState | None, rows: Iterable[tuple[str, str | None]]) -> str:
        """"" if ``recorded`` (read in the same snapshot) matches ``rows`` (every secret's path and MAC)."""
        actual = self.compute(rows, recorded.key_id if recorded is not None and not recorded.problem else None)
        if recorded is None:
            return "" if actual.count == 0 else (
                f"secret state record {self.path} is missing or empty, but the store holds {actual.count} secret(s)")
        if recorded.problem:
            return f"secret state record {self.path} {recorded.problem}"
        if recorded.total != actual.total or recorded.count != actual.count:
            return ("secret rows differ from the state recorded outside the database: a secret was put back to an "
                    "earlier copy of its rows (rollback) or its rows were removed; compare `runlease history` with "
                    "`runlease audit show --path ...`, restore what is right, then `runlease audit verify --reanchor`")
        return ""


__all__ = ["SecretState", "SecretStateRecorder", "secret_state_path"]
