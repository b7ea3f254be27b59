"""The embedded default store: encrypted versions and stage labels in one SQLite file.

Every value is sealed by :mod:`runlease.keys.crypto` before it reaches SQLite, so
the database, its WAL and its SHM hold only ciphertext. Writes and stage
moves run in ``BEGIN IMMEDIATE`` transactions, which makes check-and-set
exact across processes: the read of CURRENT and the write that depends on it
happen under the same write lock.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from runlease.keys.crypto import Keyring, Sealed, rewrap, seal, unseal
from runlease.clients.db import SCHEMA_VERSION, Database
from runlease.errors import ConflictError, InvalidValueError, MasterKeyError, SecretNotFoundError, StoreUnavailableError
from runlease.models import SecretInfo, SecretPath, SecretValue, SecretVersion, Stage, utcnow
from runlease.integrity.rowauth import RowAuthenticator, RowKeyNotLoadedError, RowTamperedError, VerifiedRows, digest
from runlease.integrity.secret_state import SecretStateRecorder
from runlease.store.base import Resolved, StoredSecret, metadata_conflicts

_KEY_CHECK_PREFIX = "key_check:"
#: The secrets row as authenticated: every column but ``mac``; its stage labels join the MAC.
SECRET_COLUMNS = "path, env, kind, name, created_at, updated_at, deleted_at, last_version, metadata"
VERSION_COLUMNS = "path, version, created_at, kek_id, wrapped_dek, ciphertext, deprecated"


def store_scope(store_id: str) -> str:
    """The row-MAC scope of a store: rows cannot be transplanted between stores sharing a KEK."""
    return f"store:{store_id}"


def secret_mac_fields(row: tuple[Any, ...], stages: list[tuple[str, int]]) -> list[Any]:
    """What a secrets row's MAC covers: its columns plus where its stage labels point.

    Covering the labels here (rather than a MAC per stage row) means moving,
    adding or deleting a label without the key breaks the secret's own row.
    """
    # Raw values (no int()): a forged non-numeric label must fail the MAC, not crash before it.
    return [*row, sorted(([str(st), v] for st, v in stages), key=lambda label: (label[0], str(label[1])))]


def version_mac_fields(row: tuple[Any, ...]) -> list[Any]:
    """What a versions row's MAC covers (the blobs by digest: they carry their own AEAD)."""
    path, version, created, kek_id, wrapped, ciphertext, deprecated = row
    return [path, version, created, kek_id, digest(wrapped), digest(ciphertext), deprecated]


def _ts(dt: datetime) -> str:
    return dt.isoformat()


def _encode(path: SecretPath, value: SecretValue) -> bytes:
    if not isinstance(value, (dict, str)):
        raise InvalidValueError(
            f"secret value for {path} must be a connection dict or a string, got {type(value).__name__}"
        )
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class LocalStore:
    """SecretStore over a :class:`~runlease.clients.db.Database`, sealed with a :class:`Keyring`."""

    name = "local"

    def __init__(self, db: Database, keyring: Keyring, state_file: Path | None = None) -> None:
        self.db = db
        self.keyring = keyring
        known = self._check_key()
        if db.schema_version != SCHEMA_VERSION:
            raise StoreUnavailableError(
                f"{db.path} has schema version {db.schema_version}; open it with `runlease` (any command) "
                "to upgrade it in place")
        scope = store_scope(self.store_id)
        self.auth = RowAuthenticator(keyring, scope, known | {keyring.active_id})
        #: Secret rows (with their stage labels) already authenticated unchanged: see VerifiedRows.
        self._verified = VerifiedRows()
        #: The signed digest of every secret row, outside the database (runlease.integrity.secret_state): catches
        #: a secret put back to an earlier genuine copy of its rows. None: not kept (a bare store in tests).
        self.state = SecretStateRecorder(keyring, scope, state_file) if state_file else None

    # -- setup and keys -----------------------------------------------------

    @classmethod
    def initialize(cls, db: Database, keyring: Keyring, store_id: str | None = None,
                   state_file: Path | None = None) -> "LocalStore":
        """Stamp a new database with a store id and a check token for the active KEK.

        ``store_id`` is given when something outside the database is already bound
        to it (a KMS-wrapped key file uses it as the encryption context).
        """
        with db.write() as tx:
            have = tx.conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'key_check:%'").fetchone()[0]
            if not have:
                tx.conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)", (store_id or str(uuid.uuid4()),)
                )
                tx.conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    (_KEY_CHECK_PREFIX + keyring.active_id, keyring.key_check()),
                )
        return cls(db, keyring, state_file)

    def _check_key(self) -> set[str]:
        """Refuse a KEK the store was not sealed with; the ids of every KEK it was (its key-check entries)."""
        rows = self.db.connection().execute(
            "SELECT key, value FROM meta WHERE key LIKE 'key_check:%'"
        ).fetchall()
        known = {k[len(_KEY_CHECK_PREFIX):]: bytes(v) for k, v in rows}
        if not known:
            raise MasterKeyError(f"store {self.db.path} was never initialized with a key; run `runlease init`")
        if not any(self.keyring.verify_key_check(kid, tok) for kid, tok in known.items()):
            raise MasterKeyError(
                f"master key does not match the store {self.db.path}: loaded {', '.join(self.keyring.ids)}, "
                f"the store was sealed with {', '.join(sorted(known))}"
            )
        self._active_registered = self.keyring.active_id in known
        return set(known)

    def _register_active_key(self, conn: Any) -> None:
        if not self._active_registered:
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (_KEY_CHECK_PREFIX + self.keyring.active_id, self.keyring.key_check()),
            )
            self._active_registered = True

    @property
    def store_id(self) -> str:
        row = self.db.connection().execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        return str(row[0])

    def kek_ids_in_use(self) -> dict[str, int]:
        """How many data keys each KEK still wraps (what `key rotate` must drive to zero)."""
        rows = self.db.connection().execute("SELECT kek_id, count(*) FROM versions GROUP BY kek_id").fetchall()
        return {k: n for k, n in rows}

    def rewrap_all(self) -> int:
        """Re-wrap every data key under the active KEK in one transaction; payloads untouched."""
        active = self.keyring.active_id
        count = 0
        with self.db.write() as tx:
            self._register_active_key(tx.conn)
            rows = tx.conn.execute(f"SELECT {VERSION_COLUMNS}, mac FROM versions").fetchall()
            for row in rows:
                self._check_version(row)
                path, version, created, kek_id, wrapped, ct, deprecated, tag = row
                if kek_id != active:
                    new = rewrap(self.keyring, Sealed(kek_id, bytes(wrapped), bytes(ct)), path, version)
                    kek_id, wrapped = new.kek_id, new.wrapped_dek
                    count += 1
                elif str(tag).startswith(active + ":"):
                    continue
                fresh = (path, version, created, kek_id, wrapped, ct, deprecated)
                tx.conn.execute(
                    "UPDATE versions SET kek_id=?, wrapped_dek=?, mac=? WHERE path=? AND version=?",
                    (kek_id, wrapped, self.auth.seal("versions", version_mac_fields(fresh)), path, version),
                )
            # Re-MAC every secret under the active key too, so the old KEK can eventually go.
            for (path,) in tx.conn.execute("SELECT path FROM secrets").fetchall():
                self._load(tx.conn, path)
                self._reseal(tx.conn, path)
            if self.state is not None:  # and the secret state record under the active key
                state = self.state.compute(self._secret_macs(tx.conn))
                tx.on_commit_latest("secret-state", lambda: self.state.write(state))  # type: ignore[union-attr]
        return count

    # -- the secret state record (rollback detection) -------------------------

    @staticmethod
    def _secret_macs(conn: Any) -> list[tuple[str, str | None]]:
        return [(str(p), m) for p, m in conn.execute("SELECT path, mac FROM secrets").fetchall()]

    def ensure_secret_state(self, *, initialize: bool) -> None:
        """Create the record from the rows as they are, if it is missing and ``initialize``.

        ``initialize`` only for a store that never had one (new, or first opened
        by a runlease that keeps it); otherwise a missing record stays missing
        for ``audit verify`` to report, rather than vouching for whatever the
        rows now say.
        """
        if self.state is None or not initialize or self.state.read() is not None:
            return
        self.record_secret_state()

    def record_secret_state(self) -> None:
        """(Re)write the record from the current rows (a new store, ``audit verify --reanchor``)."""
        if self.state is None:
            return
        with self.db.write() as tx:
            state = self.state.compute(self._secret_macs(tx.conn))
            tx.on_commit_latest("secret-state", lambda: self.state.write(state))  # type: ignore[union-attr]

    def check_secret_state(self) -> str:
        """"" if every secret row is in the state recorded outside the database, else why not."""
        if self.state is None:
            return ""
        with self.db.read() as conn:
            with self.db.snapshot_between_writes():  # no writer between its commit and its record update
                recorded = self.state.read()
            rows = self._secret_macs(conn)
        return self.state.check(recorded, rows)

    def tampered_rows(self) -> list[str]:
        """Every secrets/versions row that fails authentication (for ``doctor``); names, never values."""
        bad: list[str] = []
        with self.db.read() as conn:
            for (path,) in conn.execute("SELECT path FROM secrets").fetchall():
                try:
                    self._load(conn, path)
                except (RowTamperedError, RowKeyNotLoadedError):
                    bad.append(f"secrets {path}")
            for row in conn.execute(f"SELECT {VERSION_COLUMNS}, mac FROM versions").fetchall():
                try:
                    self._check_version(row)
                except (RowTamperedError, RowKeyNotLoadedError):
                    bad.append(f"versions {row[0]} v{row[1]}")
        return bad

    # -- authenticated rows -----------------------------------------------------

    def _load(self, conn: Any, path: str) -> tuple[tuple[Any, ...], dict[Stage, int]] | None:
        """A secret's row and stage labels, authenticated; None if there is no row."""
        row = conn.execute(f"SELECT {SECRET_COLUMNS}, mac FROM secrets WHERE path=?", (path,)).fetchone()
        if row is None:
            return None
        stages = conn.execute("SELECT stage, version FROM stages WHERE path=?", (path,)).fetchall()
        raw = (tuple(row), tuple(stages))
        if not self._verified.known("secrets", path, raw):
            self.auth.check("secrets", path, secret_mac_fields(row[:-1], stages), row[-1])
            self._verified.remember("secrets", path, raw)
        try:
            labels = {Stage(st): int(v) for st, v in stages}
        except ValueError:  # unreachable with a valid MAC; kept so a bad label is never half-read
            raise InvalidValueError(f"secret {path} has an unknown stage label") from None
        return tuple(row[:-1]), labels

    def _reseal(self, conn: Any, path: str) -> None:
        """Recompute a secret's MAC after its row or its stage labels changed (same transaction),
        and note the change for the secret state record (moved after the commit)."""
        row = conn.execute(f"SELECT {SECRET_COLUMNS}, mac FROM secrets WHERE path=?", (path,)).fetchone()
        stages = conn.execute("SELECT stage, version FROM stages WHERE path=?", (path,)).fetchall()
        new = self.auth.seal("secrets", secret_mac_fields(row[:-1], stages))
        conn.execute("UPDATE secrets SET mac=? WHERE path=?", (new, path))
        tx = self.db.current_transaction()
        if self.state is not None and tx is not None:
            changes: dict[str, tuple[str | None, str]] = tx.notes.setdefault("secret-state", {})
            changes[path] = (changes[path][0] if path in changes else row[-1], new)
            recorder = self.state
            tx.on_commit_latest("secret-state", lambda: recorder.move(changes))

    def _check_version(self, row: tuple[Any, ...]) -> None:
        """``row`` is VERSION_COLUMNS then mac."""
        self.auth.check("versions", f"{row[0]} v{row[1]}", version_mac_fields(tuple(row[:7])), row[7])

    def _live_row(self, conn: Any, path: SecretPath) -> Any:
        """``(last_version, deleted_at, metadata, stages)`` of a live, authenticated secret."""
        loaded = self._load(conn, str(path))
        if loaded is None or loaded[0][6] is not None:
            raise SecretNotFoundError(f"secret {path} not found")
        row, stages = loaded
        return int(row[7]), row[6], row[8], stages

    # -- reads ----------------------------------------------------------------

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> Resolved:
        with self.db.read() as conn:
            last, _deleted, metadata, stages = self._live_row(conn, path)
        if stage not in stages:
            raise SecretNotFoundError(f"secret {path} has no {stage.value} version")
        return Resolved(version=stages[stage], metadata=json.loads(metadata))

    def get(self, path: SecretPath, *, version: int | None = None, stage: Stage | None = Stage.CURRENT) -> StoredSecret:
        with self.db.read() as conn:
            last, _deleted, meta, stages = self._live_row(conn, path)
            if version is None:
                want = stage or Stage.CURRENT
                if want not in stages:
                    raise SecretNotFoundError(f"secret {path} has no {want.value} version")
                version = stages[want]
            row = conn.execute(
                f"SELECT {VERSION_COLUMNS}, mac FROM versions WHERE path=? AND version=?", (str(path), version)
            ).fetchone()
        if row is None:
            if 1 <= version <= last:  # the authenticated secret row vouches that it exists
                raise RowTamperedError("versions", f"{path} v{version}",
                                       "is missing although the secret's authenticated row vouches for it")
            raise SecretNotFoundError(f"secret {path} has no version {version}")
        self._check_version(row)
        plaintext = unseal(self.keyring, Sealed(row[3], bytes(row[4]), bytes(row[5])), str(path), version)
        return StoredSecret(path=path, version=version, value=json.loads(plaintext), metadata=json.loads(meta))

    def info(self, path: SecretPath) -> SecretInfo:
        found = self.list(str(path), include_deleted=True, exact=True)
        if not found:
            raise SecretNotFoundError(f"secret {path} not found")
        return found[0]

    def list(self, prefix: str = "", *, include_deleted: bool = False, exact: bool = False,
             tampered: list[RowTamperedError | RowKeyNotLoadedError] | None = None) -> list[SecretInfo]:
        """Authenticated secrets under ``prefix``.

        With ``tampered`` given (listings), a row that fails authentication goes
        there and is left out, so one bad row does not hide every good one;
        without it (every path that acts on a row) the first bad row raises.
        """
        with self.db.read() as conn:
            if exact:
                paths = [r[0] for r in conn.execute("SELECT path FROM secrets WHERE path = ?", (prefix,))]
            else:
                like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                paths = [r[0] for r in conn.execute(
                    "SELECT path FROM secrets WHERE path LIKE ? ESCAPE '\\' ORDER BY path", (like,))]
            loaded = []
            for p in paths:
                try:
                    loaded.append(self._load(conn, p))
                except (RowTamperedError, RowKeyNotLoadedError) as err:
                    if tampered is None:
                        raise
                    tampered.append(err)
        out = []
        for found in loaded:
            if found is None:
                continue
            (path, _env, _kind, _name, created, updated, deleted, last_version, metadata), stages = found
            if deleted and not include_deleted:
                continue
            out.append(
                SecretInfo(
                    path=SecretPath.parse(path),
                    stages=stages,
                    versions=last_version,
                    created_at=created,
                    updated_at=updated,
                    deleted=deleted is not None,
                    metadata=json.loads(metadata),
                )
            )
        return out

    def history(self, path: SecretPath, *,
                tampered: list[RowTamperedError | RowKeyNotLoadedError] | None = None) -> list[SecretVersion]:
        """The secret's authenticated versions and their stage labels.

        With ``tampered`` given (the ``history`` listing), bad rows go there
        instead of raising: a tampered version row is left out; a tampered
        secret row leaves every version without stage labels (they live in it).
        """
        labels: dict[int, list[Stage]] = {}
        with self.db.read() as conn:
            try:
                loaded = self._load(conn, str(path))
            except (RowTamperedError, RowKeyNotLoadedError) as err:
                if tampered is None:
                    raise
                tampered.append(err)
                loaded = ((), {})
            if loaded is None:
                raise SecretNotFoundError(f"secret {path} not found")
            for st, v in loaded[1].items():
                labels.setdefault(v, []).append(st)
            rows = conn.execute(
                f"SELECT {VERSION_COLUMNS}, mac FROM versions WHERE path=? ORDER BY version", (str(path),)
            ).fetchall()
        good = []
        for row in rows:
            try:
                self._check_version(row)
                good.append(row)
            except (RowTamperedError, RowKeyNotLoadedError) as err:
                if tampered is None:
                    raise
                tampered.append(err)
        return [
            SecretVersion(path=path, version=r[1], created_at=r[2], stages=sorted(labels.get(r[1], [])),
                          deprecated=bool(r[6]))
            for r in good
        ]

    # -- writes ---------------------------------------------------------------

    def put(self, path: SecretPath, value: SecretValue, *, cas: int | None = None, stage: Stage = Stage.CURRENT) -> int:
        plaintext = _encode(path, value)
        now = _ts(utcnow())
        p = str(path)
        with self.db.write() as tx:
            c = tx.conn
            loaded = self._load(c, p)
            row = (int(loaded[0][7]), loaded[0][6]) if loaded else None
            live = row is not None and row[1] is None
            current = loaded[1].get(Stage.CURRENT) if loaded else None
            actual = int(current) if (live and current) else 0
            if cas is not None and cas != actual:
                raise ConflictError(f"check-and-set failed for {p}: expected CURRENT v{cas}, found v{actual}")
            version = (row[0] if row else 0) + 1
            sealed = seal(self.keyring, plaintext, p, version)
            self._register_active_key(c)
            if row is None:
                c.execute(
                    "INSERT INTO secrets(path, env, kind, name, created_at, updated_at, last_version) VALUES (?,?,?,?,?,?,?)",
                    (p, path.env, path.kind, path.name, now, now, version),
                )
            else:
                c.execute(
                    "UPDATE secrets SET last_version=?, updated_at=?, deleted_at=NULL WHERE path=?", (version, now, p)
                )
                if not live:
                    # Reviving a deleted secret starts afresh: labels from before the
                    # delete must not make its old versions readable again.
                    c.execute("DELETE FROM stages WHERE path=?", (p,))
            fields = (p, version, now, sealed.kek_id, sealed.wrapped_dek, sealed.ciphertext, 0)
            c.execute(
                f"INSERT INTO versions({VERSION_COLUMNS}, mac) VALUES (?,?,?,?,?,?,?,?)",
                (*fields, self.auth.seal("versions", version_mac_fields(fields))),
            )
            if stage is Stage.CURRENT and actual:
                self._set_stage(c, p, Stage.PREVIOUS, actual)
            self._set_stage(c, p, stage, version)
            self._reseal(c, p)
        return version

    @staticmethod
    def _set_stage(conn: Any, path: str, stage: Stage, version: int | None) -> None:
        if version is None:
            conn.execute("DELETE FROM stages WHERE path=? AND stage=?", (path, stage.value))
        else:
            conn.execute(
                "INSERT INTO stages(path, stage, version) VALUES (?,?,?) "
                "ON CONFLICT(path, stage) DO UPDATE SET version=excluded.version",
                (path, stage.value, version),
            )

    def move_stage(self, path: SecretPath, stage: Stage, version: int | None, *, expected: int | None = None) -> None:
        p = str(path)
        with self.db.write() as tx:
            last, _deleted, _meta, stages = self._live_row(tx.conn, path)
            if version is not None and not 1 <= version <= last:
                raise SecretNotFoundError(f"secret {p} has no version {version}")
            holder = stages.get(stage)
            if expected is not None and holder != expected:
                raise ConflictError(f"stage {stage.value} of {p} moved: expected v{expected}, found {holder}")
            self._set_stage(tx.conn, p, stage, version)
            tx.conn.execute("UPDATE secrets SET updated_at=? WHERE path=?", (_ts(utcnow()), p))
            self._reseal(tx.conn, p)

    def delete(self, path: SecretPath) -> None:
        with self.db.write() as tx:
            self._live_row(tx.conn, path)
            tx.conn.execute("UPDATE secrets SET deleted_at=? WHERE path=?", (_ts(utcnow()), str(path)))
            self._reseal(tx.conn, str(path))

    def update_metadata(
        self, path: SecretPath, patch: dict[str, Any], *, expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # Read, compare and write under one BEGIN IMMEDIATE: exact across processes.
        with self.db.write() as tx:
            meta = json.loads(self._live_row(tx.conn, path)[2])
            stale = metadata_conflicts(meta, expected)
            if stale:
                raise ConflictError(f"metadata of {path} changed: {', '.join(stale)} no longer as expected")
            meta.update(patch)
            tx.conn.execute("UPDATE secrets SET metadata=? WHERE path=?", (json.dumps(meta, sort_keys=True), str(path)))
            self._reseal(tx.conn, str(path))
        return meta

    def deprecate(self, path: SecretPath, version: int) -> None:
        """Mark a version deprecated (rotation retired it); it stays readable by number for audit."""
        with self.db.write() as tx:
            row = tx.conn.execute(
                f"SELECT {VERSION_COLUMNS}, mac FROM versions WHERE path=? AND version=?", (str(path), version)
            ).fetchone()
            if row is None:
                raise SecretNotFoundError(f"secret {path} has no version {version}")
            self._check_version(row)
            fresh = (*row[:6], 1)
            tx.conn.execute("UPDATE versions SET deprecated=1, mac=? WHERE path=? AND version=?",
                            (self.auth.seal("versions", version_mac_fields(fresh)), str(path), version))
