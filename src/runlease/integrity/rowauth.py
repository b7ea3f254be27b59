"""Row authentication: an HMAC over every stored row the broker or an issuer acts on.

Why: the database is the easiest thing on a machine to write (a backup tool,
the ``sqlite3`` shell, a PostgreSQL writer role). Values are sealed with
AES-GCM, but what *surrounds* them -- which issuer a secret uses and its
options, where CURRENT points, whether the secret is deleted, what a lease
row says to revoke -- used to be plain columns. Someone with write access but
no KEK could switch ``metadata.issuer`` from ``postgres`` to ``static`` and
be handed the admin connection, move CURRENT back to a retired token, or
forge a lease whose revocation drops a role of their choosing.

Every such row now carries ``mac = "<kek_id>:<hex HMAC-SHA256>"`` under a key
derived from that KEK (:meth:`Keyring.row_key`); the message is the table,
the *scope* (the store or ledger id, so a row cannot be transplanted between
two stores that share a KEK) and every field the row holds. Naming the KEK
keeps ``runlease key rotate`` working: rows MAC'd under an older key verify
while it stays in the keyring, and the store re-MACs its rows when it
re-wraps data keys.

What a MAC cannot show: that a row is the *newest* genuine one. Putting back
an entire earlier copy of a secret's rows (its row and its stage labels
together, taken from the same moment) is a rollback of that secret, which
reads cannot tell; the signed secret state record outside the database
(:mod:`runlease.integrity.secret_state`) makes ``audit verify`` catch it. See
docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from runlease.keys.crypto import Keyring, mac
from runlease.errors import IntegrityError, MasterKeyError

ROW_FORMAT = "runlease-row/v1"


class RowTamperedError(IntegrityError):
    """A stored row failed authentication; ``table`` and ``row_id`` name it (never a value)."""

    def __init__(self, table: str, row_id: str,
                 why: str = "failed authentication (changed outside runlease, without the master key)") -> None:
        self.table = table
        self.row_id = row_id
        super().__init__(f"{table} row {row_id} {why}; refusing to act on it")


class RowKeyNotLoadedError(MasterKeyError):
    """A row is MAC'd under a KEK this process does not hold (after ``key rotate``, or forged).

    A key problem (exit 3) rather than tampering: the row cannot be checked
    either way, so it is not acted on.
    """

    def __init__(self, table: str, row_id: str, kek_id: str, loaded: list[str]) -> None:
        self.table = table
        self.row_id = row_id
        super().__init__(f"{table} row {row_id} is authenticated by master key {kek_id}, which is not loaded "
                         f"(loaded: {', '.join(loaded)}); refusing to act on it")


def digest(blob: bytes | None) -> str | None:
    """A short stand-in for a large blob inside a MAC message (the blob has its own AEAD)."""
    return None if blob is None else hashlib.sha256(bytes(blob)).hexdigest()


class RowAuthenticator:
    """Computes and checks row MACs for one store or ledger (its ``scope``)."""

    def __init__(self, keyring: Keyring, scope: str, known_kek_ids: set[str] | None = None) -> None:
        self.keyring = keyring
        self.scope = scope
        #: KEK ids the store or ledger was ever sealed with (its key-check entries): a MAC naming
        #: any other id was not written by runlease, so it is tampering, not a missing key.
        self.known_kek_ids = known_kek_ids

    def _message(self, table: str, fields: Sequence[Any]) -> bytes:
        return json.dumps([ROW_FORMAT, self.scope, table, *fields], separators=(",", ":"), default=str,
                          ensure_ascii=True).encode()

    def seal(self, table: str, fields: Sequence[Any]) -> str:
        """The ``mac`` column for a row holding ``fields``, under the active KEK."""
        kid = self.keyring.active_id
        return f"{kid}:{mac(self.keyring.row_key(kid), self._message(table, fields)).hex()}"

    def valid(self, table: str, fields: Sequence[Any], tag: Any) -> bool:
        """True if ``tag`` authenticates ``fields``; a missing tag or an unloaded KEK is not valid."""
        if not isinstance(tag, str) or ":" not in tag:
            return False
        kid, _, hex_mac = tag.partition(":")
        if kid not in self.keyring:
            return False
        expected = mac(self.keyring.row_key(kid), self._message(table, fields)).hex()
        return hmac.compare_digest(expected, hex_mac)

    def check(self, table: str, row_id: str, fields: Sequence[Any], tag: Any) -> None:
        """Raise :class:`RowTamperedError` unless ``tag`` authenticates ``fields``."""
        if not self.valid(table, fields, tag):
            kid = tag.partition(":")[0] if isinstance(tag, str) and ":" in tag else ""
            known = self.known_kek_ids is None or kid in self.known_kek_ids
            if kid.startswith("kek-") and kid not in self.keyring and known:
                raise RowKeyNotLoadedError(table, row_id, kid[:40], self.keyring.ids)
            raise RowTamperedError(table, row_id)


class VerifiedRows:
    """Rows this process has already authenticated, kept as the exact raw data their MAC was checked on.

    Why: the hot reads (a worker's lease cache revalidating on every hit: the
    secret's row for "is CURRENT still my version", the lease row for "is my
    lease still active") read the same rows again and again, and rebuilding
    the MAC message and the HMAC is a large part of each read. Raw data read
    again *unchanged* -- every column, the ``mac`` included -- authenticates
    exactly as it did the first time (the MAC is a function of that data), so
    the check can be skipped; any change (a revoke, a stage move, a reseal by
    ``key rotate``, an attacker's edit) makes it different data, checked
    afresh. Callers still decode the raw data on every read. Bounded (least
    recently used out), per process, thread-safe.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._rows: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, table: str, row_id: str, raw: Any) -> bool:
        """True if exactly ``raw`` was authenticated before as ``table``/``row_id``."""
        key = (table, row_id)
        with self._lock:
            if key in self._rows and self._rows[key] == raw:
                self._rows.move_to_end(key)
                return True
        return False

    def remember(self, table: str, row_id: str, raw: Any) -> None:
        """Record that ``raw`` just passed authentication (call only after the check succeeded)."""
        key = (table, row_id)
        with self._lock:
            self._rows[key] = raw
            self._rows.move_to_end(key)
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)
