"""One SQLite file shared by the local store and the local ledger, safe across processes.

Why these settings: WAL lets readers run while one writer commits;
``synchronous=FULL`` makes every committed audit event durable; every write
transaction starts with ``BEGIN IMMEDIATE`` so it takes the write lock up
front, which is what lets SQLite's busy handler (``busy_timeout``) queue
writers instead of failing with "database is locked" when a deferred reader
tries to upgrade. Connections are per thread because sqlite3 connections
must not be shared between threads mid-transaction.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runlease.errors import StoreUnavailableError

#: 2 added the ``mac`` columns (row authentication, runlease.integrity.rowauth); a version-1 file is
#: upgraded in place by runlease.integrity.migrations when a runtime opens it with the key.
SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSIONS = (1,)
BUSY_TIMEOUT_MS = 60_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    path        TEXT PRIMARY KEY,
    env         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted_at  TEXT,
    last_version INTEGER NOT NULL DEFAULT 0,
    metadata    TEXT NOT NULL DEFAULT '{}',
    mac         TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    path        TEXT NOT NULL REFERENCES secrets(path),
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    deprecated  INTEGER NOT NULL DEFAULT 0,
    mac         TEXT,
    PRIMARY KEY (path, version)
);
CREATE TABLE IF NOT EXISTS stages (
    path    TEXT NOT NULL REFERENCES secrets(path),
    stage   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (path, stage)
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id     TEXT PRIMARY KEY,
    path         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    stage        TEXT,
    issuer       TEXT NOT NULL,
    orchestrator TEXT NOT NULL,
    pipeline     TEXT NOT NULL,
    run_id       TEXT,
    task_id      TEXT,
    try_number   INTEGER,
    map_index    INTEGER,
    principal    TEXT,
    issued_at    TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    state        TEXT NOT NULL,
    revoked_at   TEXT,
    revoke_reason TEXT,
    issuer_state TEXT NOT NULL DEFAULT '{}',
    mac          TEXT
);
CREATE INDEX IF NOT EXISTS leases_run ON leases(run_id, state);
CREATE INDEX IF NOT EXISTS leases_state_expiry ON leases(state, expires_at);
CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY,
    ts           TEXT NOT NULL,
    action       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    path         TEXT,
    version      INTEGER,
    lease_id     TEXT,
    orchestrator TEXT,
    pipeline     TEXT,
    run_id       TEXT,
    task_id      TEXT,
    try_number   INTEGER,
    map_index    INTEGER,
    principal    TEXT,
    detail       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    chain        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_run ON audit(run_id);
CREATE INDEX IF NOT EXISTS audit_path ON audit(path);
"""


#: Serial numbers of the connections this process opened (a stamp never matches another connection's).
_CONNECTION_SERIALS = itertools.count(1)


class Transaction:
    """The open write transaction: its connection plus hooks to run once it committed.

    ``on_commit`` is for side effects outside SQLite (advancing the audit
    anchor file) that must never get ahead of what is durably committed.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after_commit: list[Callable[[], None]] = []
        self._latest: dict[str, Callable[[], None]] = {}
        #: The audit chain's tip before this transaction's first append (the strict anchor moves from it).
        self.audit_tip_before: int | None = None
        #: What writers note for their after-commit hooks (e.g. which secret rows changed), by key.
        self.notes: dict[str, Any] = {}

    def on_commit(self, hook: Callable[[], None]) -> None:
        self._after_commit.append(hook)

    def on_commit_latest(self, key: str, hook: Callable[[], None]) -> None:
        """Like :meth:`on_commit`, but only the last hook registered under ``key`` runs.

        For side effects where only the final state matters (the audit anchor
        after several appends in one transaction): one file write, not one per event.
        """
        self._latest[key] = hook

    def _committed(self) -> None:
        for hook in [*self._after_commit, *self._latest.values()]:
            hook()


class Database:
    """A SQLite file opened in WAL mode with per-thread connections and reentrant writes."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        self._thread_turn = threading.Lock()
        self._turn_fd = -1
        self._turn_pid = -1
        if not create and not self.path.exists():
            raise StoreUnavailableError(f"no runlease store at {self.path}; run `runlease init`")
        if create and not self.path.exists():
            # 0600 whatever the umask (002 would make it group-writable, which every open refuses);
            # SQLite gives the WAL and SHM files the database file's mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        self._local = threading.local()
        conn = self.connection()
        try:
            if create:
                with self.write() as tx:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            tx.conn.execute(statement)
                    tx.conn.execute(
                        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            self.close()
            raise StoreUnavailableError(f"{self.path} is not a usable runlease store ({err})") from None
        if row is None or int(row[0]) not in (SCHEMA_VERSION, *LEGACY_SCHEMA_VERSIONS):
            self.close()
            raise StoreUnavailableError(f"{self.path} has an unknown schema version; expected {SCHEMA_VERSION}")
        #: The file's schema version; older ones are upgraded by runlease.integrity.migrations (needs the key).
        self.schema_version = int(row[0])

    def current_transaction(self) -> Transaction | None:
        """This thread's open write transaction, if any."""
        return getattr(self._local, "tx", None)

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as err:
                raise StoreUnavailableError(f"{self.path} is not a usable runlease store ({err})") from None
            if str(mode).lower() != "wal":
                raise StoreUnavailableError(f"{self.path}: could not enable WAL mode (got {mode})")
            self._local.conn = conn
            self._local.tx = None
            self._local.serial = next(_CONNECTION_SERIALS)
            self._local.commits = 0
        return conn

    def change_stamp(self) -> tuple[int, int, int] | None:
        """A value that differs whenever the database may have changed, as this thread's connection sees it.

        ``(connection serial, PRAGMA data_version, commits through this connection)``:
        SQLite's ``data_version`` moves when any *other* connection (another
        thread, another process, an attacker's ``sqlite3``) commits; this
        connection's own commits are counted here. Equal stamps mean nothing was
        committed in between, so what was read then is still what a read would
        return. None inside an open write transaction, whose uncommitted writes
        no stamp covers. For the per-hit "is my lease still active?" read, which
        this turns into one ``PRAGMA`` while nothing changed.
        """
        if getattr(self._local, "tx", None) is not None:
            return None
        conn = self.connection()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        return (self._local.serial, int(version), self._local.commits)

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        outer: Transaction | None = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        conn = self.connection()
        with self._writer_turn():
            self._begin_immediate(conn)
            tx = Transaction(conn)
            self._local.tx = tx
            try:
                yield tx
                conn.execute("COMMIT")
                self._local.commits += 1
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            finally:
                self._local.tx = None
            # Still inside the turn: after-commit hooks (the audit anchor) then run in
            # commit order with no second lock hand-off between processes.
            tx._committed()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Queue writers in the kernel (flock) before they ask SQLite for its write lock.

        SQLite's busy handler makes a blocked writer *sleep and retry* (1, 2, 5,
        ... 100 ms), so with several processes writing, the lock often sits free
        while everyone sleeps: measured here, 4 processes leasing at once had a
        p99 of ~35 ms and lost throughput to it. A blocking ``flock`` on a side
        file wakes the next writer the moment the previous one unlocks. A thread
        lock comes first because flock does not exclude threads sharing one
        descriptor. ``BEGIN IMMEDIATE`` + ``busy_timeout`` still guard against
        writers that do not take this turn (the sqlite3 shell, another tool).
        """
        with self._thread_turn:
            if self._turn_pid != os.getpid():  # after fork: our own descriptor, not the parent's
                self._turn_fd = os.open(f"{self.path}.writers",
                                        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                self._turn_pid = os.getpid()
            fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    @contextmanager
    def snapshot_between_writes(self) -> Iterator[sqlite3.Connection]:
        """A read snapshot taken while no runlease writer is between its commit and its hooks.

        For reading something outside the database (the audit anchor) that must
        match the snapshot exactly: yields the connection inside the writer turn
        with the snapshot already established; the caller reads the outside
        thing there, then leaves the block and reads on (the snapshot stays
        until the outer ``read`` ends). Use as ``with db.read(), db.snapshot_between_writes()``.
        """
        if getattr(self._local, "tx", None) is not None:  # our own write: nothing runs between
            yield self._local.tx.conn
            return
        conn = self.connection()
        with self._writer_turn():
            conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # establishes the WAL read snapshot
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads (or the open write tx)."""
        if getattr(self._local, "tx", None) is not None:
            yield self._local.tx.conn
            return
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _begin_immediate(conn: sqlite3.Connection) -> None:
        # busy_timeout already waits; this loop only covers the rare SQLITE_BUSY
        # returned without invoking the handler (e.g. during WAL recovery).
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailableError(f"store is busy for more than {BUSY_TIMEOUT_MS} ms") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._thread_turn:  # never while another thread of ours holds the turn
            if self._turn_pid == os.getpid():
                os.close(self._turn_fd)
                self._turn_fd, self._turn_pid = -1, -1
