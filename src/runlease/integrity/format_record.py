"""A signed record, kept in the home, that a store's (or ledger's) rows are authenticated.

Why: a database cannot vouch for its own format. Before this record, someone
who could write the SQLite file but had no key could rewrite it into the
format older runlease wrote (drop the ``mac`` columns, reset
``schema_version`` to 1, forge rows); the next open took it for a genuine old
store, "upgraded" it and signed the forged rows. Now the upgrade (and every
open of an upgraded or new store) leaves this record beside the database,
signed with a key derived from the KEK and bound to the store's scope and
schema version. An open that finds a pre-MAC database while the home holds
such a record -- or a signed audit anchor, which only runlease with row MACs
ever wrote -- refuses it as a downgrade (exit 7) instead of migrating it.

The record is one short JSON document::

    {"format": "runlease-format-record/v1", "scope": "...", "schema_version": 2,
     "key_id": "kek-...", "mac": "<hex HMAC-SHA256>"}

What it cannot do: an attacker who can write the *home* (delete this file
and the anchor, or replace the anchor with an unsigned old-style one) can
still make the home look like one no runlease with row MACs ever opened. The
home guard makes that the user themself or root; docs/security.md says so.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runlease.audit.chain import ANCHOR_FORMAT, raw_anchor
from runlease.keys.crypto import Keyring, mac
from runlease.errors import IntegrityError
from runlease.integrity.home_guard import replace_private_file

RECORD_FORMAT = "runlease-format-record/v1"
#: HKDF purpose of the record's key: its own, so it shares no key with rows, audit or anchor.
FORMAT_RECORD_INFO = b"runlease/v1/format-record"
_MAX_BYTES = 4096


class StoreDowngradedError(IntegrityError):
    """A pre-MAC database or ledger where the home (or the ledger) shows it was migrated already (exit 7)."""


def store_record_path(store_file: Path) -> Path:
    """Where the home's SQLite file (store + local ledger) keeps its record."""
    return Path(f"{store_file}.format")


def ledger_record_path(home: Path, ledger_id: str) -> Path:
    """Where this machine keeps the record of a shared PostgreSQL ledger (beside its anchor)."""
    return home / f"ledger.{ledger_id}.format"


@dataclass(frozen=True)
class FormatRecord:
    """What a record file says: ``present`` (any file at all), and if genuine, its schema version."""

    present: bool
    schema_version: int | None = None
    key_id: str = ""

    @property
    def genuine(self) -> bool:
        return self.schema_version is not None


class FormatRecorder:
    """Writes and reads the record of one store or ledger (``scope``)."""

    def __init__(self, keyring: Keyring, scope: str) -> None:
        self.keyring = keyring
        self.scope = scope

    def _mac(self, kid: str, schema_version: int) -> str:
        message = json.dumps([RECORD_FORMAT, self.scope, schema_version], separators=(",", ":")).encode()
        return mac(self.keyring.derived_key(kid, FORMAT_RECORD_INFO), message).hex()

    def read(self, path: Path) -> FormatRecord:
        """The record at ``path``; a file that is not a genuine record of this scope is present but not genuine."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return FormatRecord(present=False)
        except OSError:  # a symlink or unreadable file: something is there, and it is not ours
            return FormatRecord(present=True)
        try:
            raw = os.read(fd, _MAX_BYTES)
        finally:
            os.close(fd)
        return self.decode(raw)

    def decode(self, raw: bytes | str) -> FormatRecord:
        """A record's text (file or meta row); anything but a genuine record of this scope is not genuine."""
        try:
            doc = json.loads(raw)
            version, kid, tag = int(doc["schema_version"]), str(doc["key_id"]), str(doc["mac"])
            if doc.get("format") != RECORD_FORMAT or doc.get("scope") != self.scope:
                return FormatRecord(present=True)
        except (ValueError, KeyError, TypeError):
            return FormatRecord(present=True)
        if kid not in self.keyring or not hmac.compare_digest(self._mac(kid, version), tag):
            return FormatRecord(present=True)
        return FormatRecord(present=True, schema_version=version, key_id=kid)

    def encode(self, schema_version: int) -> str:
        """The record's text, signed under the active KEK."""
        kid = self.keyring.active_id
        return json.dumps({"format": RECORD_FORMAT, "scope": self.scope, "schema_version": schema_version,
                           "key_id": kid, "mac": self._mac(kid, schema_version)})

    def write(self, path: Path, schema_version: int) -> None:
        """(Re)write the record under the active KEK: a new file renamed over the old one, 0600, no links."""
        replace_private_file(path, self.encode(schema_version).encode() + b"\n", durable=True)

    def ensure(self, path: Path, schema_version: int) -> None:
        """Write the record unless a genuine one for this version under the active key is there already.

        For a store already in the current format, a missing or stale record (a
        home set up before records existed, a crash after an upgrade, a KEK
        rotation) is simply renewed: only a *pre-MAC* database next to a record
        is a downgrade.
        """
        current = self.read(path)
        if current.schema_version != schema_version or current.key_id != self.keyring.active_id:
            self.write(path, schema_version)


def signed_anchor_present(anchor_file: Path | None) -> bool:
    """True if ``anchor_file`` holds an anchor in the signed format, which only runlease with row MACs writes.

    Its signature is not checked here: old runlease never wrote this format at
    all, so even a forged one next to a pre-MAC database means someone is
    presenting a downgraded file.
    """
    raw = raw_anchor(anchor_file) if anchor_file is not None else None
    if raw is None:
        return False
    try:
        return json.loads(raw).get("format") == ANCHOR_FORMAT
    except (ValueError, AttributeError):
        return False


def downgrade_evidence(record: FormatRecord, anchor_file: Path | None) -> str:
    """Why a pre-MAC database is a downgrade here, or "" if nothing says it was ever migrated."""
    if record.genuine:
        return f"the home's signed format record says it was migrated to schema version {record.schema_version}"
    if record.present:
        return "the home holds a format record (which no pre-MAC runlease writes)"
    if signed_anchor_present(anchor_file):
        return "its audit anchor is in the signed format (which no pre-MAC runlease writes)"
    return ""


__all__ = [
    "FormatRecord",
    "StoreDowngradedError",
    "FormatRecorder",
    "downgrade_evidence",
    "ledger_record_path",
    "signed_anchor_present",
    "store_record_path",
]
