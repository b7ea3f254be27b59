"""The embedded default store: encrypted versions and stage labels in one SQLite file.

Every value is sealed by :mod:`runlease.crypto` before it reaches SQLite, so
the database, its WAL and its SHM hold only ciphertext. Writes and stage
moves run in ``BEGIN IMMEDIATE`` transactions, which makes check-and-set
exact across processes: the read of CURRENT and the write that depends on it
happen under the same write lock.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from runlease.crypto import Keyring, Sealed, rewrap, seal, unseal
from runlease.db import Database
from runlease.errors import ConflictError, InvalidValueError, MasterKeyError, SecretNotFoundError
from runlease.models import SecretInfo, SecretPath, SecretValue, SecretVersion, Stage, utcnow
from runlease.store.base import Resolved, StoredSecret, metadata_conflicts

_KEY_CHECK_PREFIX = "key_check:"


def _ts(dt: datetime) -> str:
    return dt.isoformat()


def _encode(path: SecretPath, value: SecretValue) -> bytes:
    if not isinstance(value, (dict, str)):
        raise InvalidValueError(
            f"secret value for {path} must be a connection dict or a string, got {type(value).__name__}"
        )
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class LocalStore:
    """SecretStore over a :class:`~runlease.db.Database`, sealed with a :class:`Keyring`."""

    name = "local"

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db = db
        self.keyring = keyring
        self._check_key()

    # -- setup and keys -----------------------------------------------------

    @classmethod
    def initialize(cls, db: Database, keyring: Keyring, store_id: str | None = None) -> "LocalStore":
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
        return cls(db, keyring)

    def _check_key(self) -> None:
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
            rows = tx.conn.execute(
                "SELECT path, version, kek_id, wrapped_dek, ciphertext FROM versions WHERE kek_id != ?", (active,)
            ).fetchall()
            for path, version, kek_id, wrapped, ct in rows:
                new = rewrap(self.keyring, Sealed(kek_id, bytes(wrapped), bytes(ct)), path, version)
                tx.conn.execute(
                    "UPDATE versions SET kek_id=?, wrapped_dek=? WHERE path=? AND version=?",
                    (new.kek_id, new.wrapped_dek, path, version),
                )
                count += 1
        return count

    # -- reads ----------------------------------------------------------------

    def _live_row(self, conn: Any, path: SecretPath) -> Any:
        row = conn.execute("SELECT last_version, deleted_at, metadata FROM secrets WHERE path=?", (str(path),)).fetchone()
        if row is None or row[1] is not None:
            raise SecretNotFoundError(f"secret {path} not found")
        return row

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> Resolved:
        row = self.db.connection().execute(
            "SELECT s.deleted_at, s.metadata, st.version FROM secrets s "
            "LEFT JOIN stages st ON st.path = s.path AND st.stage = ? WHERE s.path = ?",
            (stage.value, str(path)),
        ).fetchone()
        if row is None or row[0] is not None:
            raise SecretNotFoundError(f"secret {path} not found")
        if row[2] is None:
            raise SecretNotFoundError(f"secret {path} has no {stage.value} version")
        return Resolved(version=int(row[2]), metadata=json.loads(row[1]))

    @staticmethod
    def _resolve(conn: Any, path: SecretPath, stage: Stage) -> int:
        row = conn.execute("SELECT version FROM stages WHERE path=? AND stage=?", (str(path), stage.value)).fetchone()
        if row is None:
            raise SecretNotFoundError(f"secret {path} has no {stage.value} version")
        return int(row[0])

    def get(self, path: SecretPath, *, version: int | None = None, stage: Stage | None = Stage.CURRENT) -> StoredSecret:
        with self.db.read() as conn:
            meta = self._live_row(conn, path)[2]
            if version is None:
                version = self._resolve(conn, path, stage or Stage.CURRENT)
            row = conn.execute(
                "SELECT kek_id, wrapped_dek, ciphertext FROM versions WHERE path=? AND version=?", (str(path), version)
            ).fetchone()
        if row is None:
            raise SecretNotFoundError(f"secret {path} has no version {version}")
        plaintext = unseal(self.keyring, Sealed(row[0], bytes(row[1]), bytes(row[2])), str(path), version)
        return StoredSecret(path=path, version=version, value=json.loads(plaintext), metadata=json.loads(meta))

    def info(self, path: SecretPath) -> SecretInfo:
        found = self.list(str(path), include_deleted=True, exact=True)
        if not found:
            raise SecretNotFoundError(f"secret {path} not found")
        return found[0]

    def list(self, prefix: str = "", *, include_deleted: bool = False, exact: bool = False) -> list[SecretInfo]:
        with self.db.read() as conn:
            if exact:
                rows = conn.execute("SELECT * FROM secrets WHERE path = ?", (prefix,)).fetchall()
            else:
                like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                rows = conn.execute(
                    "SELECT * FROM secrets WHERE path LIKE ? ESCAPE '\\' ORDER BY path", (like,)
                ).fetchall()
            stages: dict[str, dict[Stage, int]] = {}
            for p, st, v in conn.execute("SELECT path, stage, version FROM stages"):
                stages.setdefault(p, {})[Stage(st)] = v
        out = []
        for path, _env, _kind, _name, created, updated, deleted, last_version, metadata in rows:
            if deleted and not include_deleted:
                continue
            out.append(
                SecretInfo(
                    path=SecretPath.parse(path),
                    stages=stages.get(path, {}),
                    versions=last_version,
                    created_at=created,
                    updated_at=updated,
                    deleted=deleted is not None,
                    metadata=json.loads(metadata),
                )
            )
        return out

    def history(self, path: SecretPath) -> list[SecretVersion]:
        with self.db.read() as conn:
            if conn.execute("SELECT 1 FROM secrets WHERE path=?", (str(path),)).fetchone() is None:
                raise SecretNotFoundError(f"secret {path} not found")
            labels: dict[int, list[Stage]] = {}
            for st, v in conn.execute("SELECT stage, version FROM stages WHERE path=?", (str(path),)):
                labels.setdefault(v, []).append(Stage(st))
            rows = conn.execute(
                "SELECT version, created_at, deprecated FROM versions WHERE path=? ORDER BY version", (str(path),)
            ).fetchall()
        return [
            SecretVersion(path=path, version=v, created_at=c, stages=sorted(labels.get(v, [])), deprecated=bool(d))
            for v, c, d in rows
        ]

    # -- writes ---------------------------------------------------------------

    def put(self, path: SecretPath, value: SecretValue, *, cas: int | None = None, stage: Stage = Stage.CURRENT) -> int:
        plaintext = _encode(path, value)
        now = _ts(utcnow())
        p = str(path)
        with self.db.write() as tx:
            c = tx.conn
            row = c.execute("SELECT last_version, deleted_at FROM secrets WHERE path=?", (p,)).fetchone()
            live = row is not None and row[1] is None
            current = c.execute("SELECT version FROM stages WHERE path=? AND stage='CURRENT'", (p,)).fetchone()
            actual = int(current[0]) if (live and current) else 0
            if cas is not None and cas != actual:
                raise ConflictError(f"check-and-set failed for {p}: expected CURRENT v{cas}, found v{actual}")
            version = (int(row[0]) if row else 0) + 1
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
            c.execute(
                "INSERT INTO versions(path, version, created_at, kek_id, wrapped_dek, ciphertext) VALUES (?,?,?,?,?,?)",
                (p, version, now, sealed.kek_id, sealed.wrapped_dek, sealed.ciphertext),
            )
            if stage is Stage.CURRENT and actual:
                self._set_stage(c, p, Stage.PREVIOUS, actual)
            self._set_stage(c, p, stage, version)
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
            last = self._live_row(tx.conn, path)[0]
            if version is not None and not 1 <= version <= last:
                raise SecretNotFoundError(f"secret {p} has no version {version}")
            row = tx.conn.execute("SELECT version FROM stages WHERE path=? AND stage=?", (p, stage.value)).fetchone()
            holder = int(row[0]) if row else None
            if expected is not None and holder != expected:
                raise ConflictError(f"stage {stage.value} of {p} moved: expected v{expected}, found {holder}")
            self._set_stage(tx.conn, p, stage, version)
            tx.conn.execute("UPDATE secrets SET updated_at=? WHERE path=?", (_ts(utcnow()), p))

    def delete(self, path: SecretPath) -> None:
        with self.db.write() as tx:
            self._live_row(tx.conn, path)
            tx.conn.execute("UPDATE secrets SET deleted_at=? WHERE path=?", (_ts(utcnow()), str(path)))

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
        return meta

    def deprecate(self, path: SecretPath, version: int) -> None:
        """Mark a version deprecated (rotation retired it); it stays readable by number for audit."""
        with self.db.write() as tx:
            changed = tx.conn.execute(
                "UPDATE versions SET deprecated=1 WHERE path=? AND version=?", (str(path), version)
            ).rowcount
            if not changed:
                raise SecretNotFoundError(f"secret {path} has no version {version}")
