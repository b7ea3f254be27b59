"""One-time, in-place upgrades of the home's SQLite file (store + local ledger).

Version 1 -> 2 adds row authentication (:mod:`runlease.rowauth`): a ``mac``
column on ``secrets``, ``versions`` and ``leases``, filled once for every
existing row under the key the runtime just proved matches the store. It
runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent openers wait and
then see version 2; a crash leaves version 1 and the next open upgrades again.

What the upgrade vouches for: rows as they are at that moment. It cannot
tell a row tampered with *before* the upgrade from a genuine one (nothing
authenticated it then); docs/security.md says so. A file that says version 1
but already holds MACs is not a legacy store but a downgrade attempt, and is
refused.
"""

from __future__ import annotations

from pathlib import Path

from runlease.audit import AnchorSigner, read_legacy_anchor, write_anchor
from runlease.crypto import Keyring
from runlease.db import SCHEMA_VERSION, Database, Transaction
from runlease.errors import IntegrityError, MasterKeyError
from runlease.ledger.base import LEASE_FIELDS, lease_from_row, ledger_scope, seal_lease
from runlease.rowauth import RowAuthenticator
from runlease.store.local import (
    SECRET_COLUMNS,
    VERSION_COLUMNS,
    secret_mac_fields,
    store_scope,
    version_mac_fields,
)

_KEY_CHECK_PREFIX = "key_check:"
_MAC_TABLES = ("secrets", "versions", "leases")


def _check_key(tx: Transaction, keyring: Keyring, db: Database) -> None:
    rows = tx.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'key_check:%'").fetchall()
    if not any(keyring.verify_key_check(k[len(_KEY_CHECK_PREFIX):], bytes(v)) for k, v in rows):
        raise MasterKeyError(f"master key does not match the store {db.path}; not upgrading it")


def _sign_legacy_anchor(tx: Transaction, keyring: Keyring, store_id: str, anchor_file: Path) -> None:
    """Replace the version-1 (unsigned) anchor with a signed one, if it names a genuine event.

    Runs only inside the upgrade: afterwards an unsigned anchor is a failure.
    An anchor that matches no event is left as it is, for ``audit verify`` to report.
    """
    legacy = read_legacy_anchor(anchor_file)
    if legacy is None:
        return
    row = tx.conn.execute("SELECT chain FROM audit WHERE seq=?", (legacy.seq,)).fetchone()
    if legacy.seq == 0 or (row is not None and row[0] == legacy.chain):
        signer = AnchorSigner(keyring, ledger_scope(store_id))
        tx.on_commit(lambda: write_anchor(anchor_file, legacy, signer))


def upgrade_sqlite(db: Database, keyring: Keyring, anchor_file: Path | None = None) -> bool:
    """Upgrade ``db`` to :data:`SCHEMA_VERSION` if it is older; True if this call upgraded it.

    With ``anchor_file``, a legacy unsigned audit anchor that still matches the
    chain is re-signed in the same step.
    """
    if db.schema_version == SCHEMA_VERSION:
        return False
    with db.write() as tx:
        version = int(tx.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version == SCHEMA_VERSION:
            db.schema_version = version
            return False
        _check_key(tx, keyring, db)
        store_id = str(tx.conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0])
        for table in _MAC_TABLES:
            columns = {r[1] for r in tx.conn.execute(f"PRAGMA table_info({table})")}
            if "mac" in columns:
                raise IntegrityError(
                    f"{db.path} says schema version {version} but its {table} table already has row MACs: "
                    "someone downgraded it to have forged rows authenticated; refusing to upgrade")
            tx.conn.execute(f"ALTER TABLE {table} ADD COLUMN mac TEXT")
        store_auth = RowAuthenticator(keyring, store_scope(store_id))
        ledger_auth = RowAuthenticator(keyring, ledger_scope(store_id))
        stages: dict[str, list[tuple[str, int]]] = {}
        for path, stage, number in tx.conn.execute("SELECT path, stage, version FROM stages"):
            stages.setdefault(path, []).append((stage, number))
        for row in tx.conn.execute(f"SELECT {SECRET_COLUMNS} FROM secrets").fetchall():
            tx.conn.execute("UPDATE secrets SET mac=? WHERE path=?",
                            (store_auth.seal("secrets", secret_mac_fields(row, stages.get(row[0], []))), row[0]))
        for row in tx.conn.execute(f"SELECT {VERSION_COLUMNS} FROM versions").fetchall():
            tx.conn.execute("UPDATE versions SET mac=? WHERE path=? AND version=?",
                            (store_auth.seal("versions", version_mac_fields(row)), row[0], row[1]))
        for row in tx.conn.execute(f"SELECT {', '.join(LEASE_FIELDS)} FROM leases").fetchall():
            lease = lease_from_row(row)
            tx.conn.execute("UPDATE leases SET mac=? WHERE lease_id=?", (seal_lease(ledger_auth, lease), lease.lease_id))
        if anchor_file is not None:
            _sign_legacy_anchor(tx, keyring, store_id, anchor_file)
        tx.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
    db.schema_version = SCHEMA_VERSION
    return True


__all__ = ["upgrade_sqlite"]
