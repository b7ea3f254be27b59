"""One-time, in-place upgrades of the home's SQLite file (store + local ledger).

Version 1 -> 2 adds row authentication (:mod:`runlease.integrity.rowauth`): a ``mac``
column on ``secrets``, ``versions`` and ``leases``, filled once for every
existing row under the key the runtime just proved matches the store. It
runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent openers wait and
then see version 2; a crash leaves version 1 and the next open upgrades again.

What the upgrade vouches for: rows as they are at that moment. It cannot
tell a row tampered with *before* the upgrade from a genuine one (nothing
authenticated it then); docs/security.md says so. A file that says version 1
but already holds MACs is not a legacy store but a downgrade attempt, and is
refused. So is a version-1 file in a home whose signed format record
(:mod:`runlease.integrity.format_record`) or signed audit anchor shows that this store
was migrated already: someone rewrote the whole file into the old format to
have forged rows signed. That refusal is audited in the file's own chain
where it can be, and the file is never touched otherwise.
"""

from __future__ import annotations

from pathlib import Path

from runlease.audit.chain import AnchorSigner, read_legacy_anchor, write_anchor
from runlease.keys.crypto import Keyring
from runlease.clients.db import SCHEMA_VERSION, Database, Transaction
from runlease.errors import IntegrityError, MasterKeyError
from runlease.integrity.format_record import FormatRecorder, StoreDowngradedError, downgrade_evidence
from runlease.ledger.base import LEASE_FIELDS, lease_from_row, ledger_scope, seal_lease
from runlease.integrity.rowauth import RowAuthenticator
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


def _store_id(conn: object) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()  # type: ignore[attr-defined]
    if row is None:
        raise MasterKeyError("store was never initialized; run `runlease init`")
    return str(row[0])


def _audit_downgrade(db: Database, keyring: Keyring, anchor_file: Path | None, err: StoreDowngradedError) -> None:
    """Record the refused downgrade in the file's own audit chain, if that still works (best effort)."""
    if anchor_file is None:
        return
    from runlease.ledger.sqlite import SqliteLedger
    from runlease.models import AuditEvent, Outcome

    try:
        SqliteLedger(db, keyring, anchor_file).append(AuditEvent(
            action="store_open", outcome=Outcome.ERROR, principal="runlease:upgrade",
            detail={"error": type(err).__name__, "table": "meta", "row": "schema_version"}))
        err.audited = True  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the refusal itself must not be masked by a failing audit
        pass


def record_format(db: Database, keyring: Keyring, record_file: Path) -> None:
    """Leave (or renew) the signed record that this store's rows are authenticated.

    Call only after the key was proven to match the store (a record signed
    with a wrong key would vouch for nothing).
    """
    if db.schema_version == SCHEMA_VERSION:
        FormatRecorder(keyring, store_scope(_store_id(db.connection()))).ensure(record_file, SCHEMA_VERSION)


def upgrade_sqlite(db: Database, keyring: Keyring, anchor_file: Path | None = None,
                   record_file: Path | None = None) -> bool:
    """Upgrade ``db`` to :data:`SCHEMA_VERSION` if it is older; True if this call upgraded it.

    With ``anchor_file``, a legacy unsigned audit anchor that still matches the
    chain is re-signed in the same step. With ``record_file`` (the home's
    format record), a version-1 file is first checked against it and the
    anchor: if either shows the store was migrated, :class:`StoreDowngradedError`,
    audited, nothing upgraded; after a genuine upgrade the record is written.
    """
    if db.schema_version == SCHEMA_VERSION:
        return False
    try:
        return _upgrade_sqlite(db, keyring, anchor_file, record_file)
    except StoreDowngradedError as err:
        _audit_downgrade(db, keyring, anchor_file, err)
        raise


def _upgrade_sqlite(db: Database, keyring: Keyring, anchor_file: Path | None, record_file: Path | None) -> bool:
    with db.write() as tx:
        version = int(tx.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version == SCHEMA_VERSION:
            db.schema_version = version
            return False
        _check_key(tx, keyring, db)
        store_id = _store_id(tx.conn)
        recorder = FormatRecorder(keyring, store_scope(store_id))
        if record_file is not None:
            # Read inside the write transaction: a concurrent opener that upgraded first wrote the
            # record only after its commit, so here we would already see version 2, never a false alarm.
            evidence = downgrade_evidence(recorder.read(record_file), anchor_file)
            if evidence:
                raise StoreDowngradedError(
                    f"{db.path} is in the pre-MAC format (schema version {version}), but {evidence}: someone "
                    "downgraded the file (rewrote it into the old format) to have forged rows authenticated; refusing to open "
                    "or upgrade it (restore the store from a backup you trust)")
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
        if record_file is not None:
            tx.on_commit(lambda: recorder.write(record_file, SCHEMA_VERSION))
        tx.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
    db.schema_version = SCHEMA_VERSION
    return True


__all__ = ["StoreDowngradedError", "record_format", "upgrade_sqlite"]
