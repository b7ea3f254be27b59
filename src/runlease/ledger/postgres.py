"""The shared ledger: leases and the audit chain in PostgreSQL, for workers on many machines.

Run-end revocation and ``audit show --run-id`` must see every lease of a
run, whichever machine its task ran on, so leases and audit move to a
server every worker can reach (the Airflow metadata database's server is a
natural home). Values stay where the store keeps them.

Same semantics as :class:`~runlease.ledger.sqlite.SqliteLedger`, same code for
the chain: events are linked with :func:`runlease.audit.chain.link`, checked with
:func:`runlease.audit.chain.verify_chain`, and stored in the same column format
(``ts`` and ``detail`` as the exact text that was chained), so a row reads
back byte-identical to what was MAC'd.

**How appends are serialized across machines.** One row,
``audit_head(seq, chain)``, holds the chain's tip. Every append runs
``SELECT ... FROM audit_head FOR UPDATE`` first, links its events to that
tip, inserts them and moves the tip, all in one transaction. The row lock
queues concurrent appenders (on any machine) exactly like SQLite's write
lock does on one machine; ``seq`` being the primary key is the backstop that
makes a forked chain impossible even if the lock were bypassed. Why a row
lock and not ``pg_advisory_xact_lock``: advisory lock keys are integers
shared by everything in the database (the Airflow metadata DB included), so
a collision with another application is possible and invisible; a row lock
is scoped to our table, shows up in ``pg_locks`` with our table's name, and
the row it locks is the data the appender needs to read anyway. Waiting is
bounded by ``lock_timeout``.

**Tail truncation.** See docs/ledger.md: the head row, per-machine anchor
files, and a writer role that cannot delete or update audit rows.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runlease.audit.chain import (
    Anchor,
    AnchorSigner,
    VerifyResult,
    advance_anchor,
    event_row,
    genesis,
    link,
    read_anchor,
    read_legacy_anchor,
    verify_chain,
    write_anchor,
)
from runlease.keys.crypto import Keyring
from runlease.errors import BackendError, ConfigError, LeaseNotFoundError, MasterKeyError
from runlease.ledger.base import (
    LEASE_FIELDS,
    AuditQuery,
    VerifiedLeaseRows,
    authenticated_leases,
    lease_filter_sql,
    lease_from_row,
    lease_values,
    ledger_scope,
    seal_lease,
    updated_active_lease,
)
from runlease.integrity.format_record import (
    FormatRecord,
    FormatRecorder,
    StoreDowngradedError,
    downgrade_evidence,
    ledger_record_path,
)
from runlease.models import AuditEvent, Lease, LeaseState, Outcome
from runlease.integrity.rowauth import RowAuthenticator
from runlease.clients.pg import DEFAULT_CONNECT_TIMEOUT, PgTarget, backend_errors, connect, require_psycopg, target_from_dsn

if TYPE_CHECKING:  # pragma: no cover
    import psycopg
    from psycopg import sql

#: 2 added ``leases.mac`` (row authentication); a version-1 schema is upgraded at open by its owner.
SCHEMA_VERSION = 2
#: Longest wait for the chain head (or any other row lock) before failing.
LOCK_TIMEOUT_MS = 30_000
#: Longest any single ledger statement may run (pages keep verify's statements short).
STATEMENT_TIMEOUT_MS = 60_000
_PAGE = 1000
_KEY_CHECK_PREFIX = "key_check:"
_LEASE_FIELDS = LEASE_FIELDS
_AUDIT_FIELDS = (
    "seq", "ts", "action", "outcome", "path", "version", "lease_id", "orchestrator", "pipeline", "run_id",
    "task_id", "try_number", "map_index", "principal", "detail", "key_id", "chain",
)

_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {s}.audit_head (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        seq bigint NOT NULL,
        chain text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {s}.leases (
        lease_id      text PRIMARY KEY,
        path          text NOT NULL,
        version       integer NOT NULL,
        stage         text,
        issuer        text NOT NULL,
        orchestrator  text NOT NULL,
        pipeline      text NOT NULL,
        run_id        text,
        task_id       text,
        try_number    integer,
        map_index     integer,
        principal     text,
        issued_at     timestamptz NOT NULL,
        expires_at    timestamptz NOT NULL,
        state         text NOT NULL,
        revoked_at    timestamptz,
        revoke_reason text,
        issuer_state  jsonb NOT NULL DEFAULT '{{}}',
        mac           text)""",
    "CREATE INDEX IF NOT EXISTS leases_run ON {s}.leases (run_id, state)",
    "CREATE INDEX IF NOT EXISTS leases_state_expiry ON {s}.leases (state, expires_at)",
    """CREATE TABLE IF NOT EXISTS {s}.audit (
        seq          bigint PRIMARY KEY,
        ts           text NOT NULL,
        action       text NOT NULL,
        outcome      text NOT NULL,
        path         text,
        version      integer,
        lease_id     text,
        orchestrator text,
        pipeline     text,
        run_id       text,
        task_id      text,
        try_number   integer,
        map_index    integer,
        principal    text,
        detail       text NOT NULL,
        key_id       text NOT NULL,
        chain        text NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_run ON {s}.audit (run_id)",
    "CREATE INDEX IF NOT EXISTS audit_path ON {s}.audit (path)",
)


def writer_grants(schema: str, role: str) -> list["sql.Composed"]:
    """GRANTs for a worker role that can use the ledger but never rewrite history.

    The worker may insert audit events but not update, delete or truncate
    them, so a stolen worker credential cannot cut the chain's tail. The
    tables stay owned by a separate owner role (the one that ran
    ``runlease init``), which no worker holds. Run these as that owner.
    """
    require_psycopg()
    from psycopg import sql

    s, r = sql.Identifier(schema), sql.Identifier(role)
    lease_columns = sql.SQL(", ").join(sql.Identifier(c) for c in WRITER_LEASE_UPDATE_COLUMNS)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        # meta: read the ids and key checks; INSERT only to vouch for a new active key after
        # `key rotate` (ON CONFLICT DO NOTHING: an existing entry is never replaced).
        sql.SQL("GRANT SELECT, INSERT ON {}.meta TO {}").format(s, r),
        sql.SQL("GRANT SELECT, UPDATE (seq, chain) ON {}.audit_head TO {}").format(s, r),
        sql.SQL("GRANT SELECT, INSERT ON {}.audit TO {}").format(s, r),
        # leases: closing and renewing change only these columns; no DELETE, and the
        # identity, path, issuer and issuer_state of a lease can never be rewritten.
        sql.SQL("GRANT SELECT, INSERT, UPDATE ({}) ON {}.leases TO {}").format(lease_columns, s, r),
    ]


#: The only lease columns a worker may UPDATE (close: state, revoked_at, revoke_reason; renew:
#: expires_at; both: the row's MAC).
WRITER_LEASE_UPDATE_COLUMNS: tuple[str, ...] = ("state", "revoked_at", "revoke_reason", "expires_at", "mac")


def _check_schema_name(schema: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ConfigError(f"ledger schema name {schema!r} (RUNLEASE_LEDGER_SCHEMA) must match [a-z_][a-z0-9_]{{0,62}}")


class _ThreadState(threading.local):
    conn: "psycopg.Connection[Any] | None" = None
    hooks: list[Callable[[], None]] | None = None


class PostgresLedger:
    """Ledger over a PostgreSQL schema; per-thread connections, one transaction per write."""

    def __init__(
        self,
        target: PgTarget,
        keyring: Keyring,
        *,
        schema: str = "runlease",
        anchor_dir: Path | None = None,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        require_psycopg()
        from psycopg import sql

        _check_schema_name(schema)
        self.target = target
        self.keyring = keyring
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._local = _ThreadState()
        self._all_conns: list[Any] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        s = sql.Identifier(schema)
        self._t = {name: sql.SQL("{}.{}").format(s, sql.Identifier(name))
                   for name in ("meta", "audit_head", "leases", "audit")}
        self._legacy = False
        self.ledger_id = self._load_ledger_id()
        known = self._check_key()
        self.auth = RowAuthenticator(keyring, ledger_scope(self.ledger_id), known | {keyring.active_id})
        #: Lease rows already authenticated by this process (the lease cache's per-hit check).
        self._verified_leases = VerifiedLeaseRows(self.auth)
        #: Per-machine anchor: the newest (seq, chain) *this* machine committed (docs/ledger.md).
        self.anchor_file = anchor_dir / f"audit.{self.ledger_id}.anchor" if anchor_dir is not None else None
        self.anchor_signer = AnchorSigner(keyring, ledger_scope(self.ledger_id))
        #: This machine's signed record that the ledger's rows are authenticated (runlease.integrity.format_record).
        self.record_file = ledger_record_path(anchor_dir, self.ledger_id) if anchor_dir is not None else None
        self.recorder = FormatRecorder(keyring, ledger_scope(self.ledger_id))
        if self._legacy:
            try:
                self._upgrade()
            except StoreDowngradedError as err:
                self._audit_downgrade(err)
                raise
        self._sign_legacy_anchor()
        self._record_format()

    # -- opening ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        dsn: str,
        keyring: Keyring,
        *,
        schema: str = "runlease",
        anchor_dir: Path | None = None,
        create: bool = False,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    ) -> "PostgresLedger":
        """Open (and with ``create``, first initialize) the ledger in ``schema``."""
        _check_schema_name(schema)
        target = target_from_dsn(dsn, "PostgreSQL ledger")
        if create:
            cls.initialize(target, keyring, schema=schema, connect_timeout=connect_timeout)
        return cls(target, keyring, schema=schema, anchor_dir=anchor_dir, connect_timeout=connect_timeout)

    @staticmethod
    def initialize(target: PgTarget, keyring: Keyring, *, schema: str = "runlease",
                   connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> None:
        """Create the schema once, idempotently, even when several machines run ``init`` at once.

        DDL runs under a transaction-scoped advisory lock: ``CREATE ... IF NOT
        EXISTS`` is not safe against a concurrent identical CREATE, and there is
        no table yet whose row could be locked. (This is the one place an
        advisory lock is right: it is held for a one-off setup, not per append.)
        """
        require_psycopg()
        from psycopg import sql

        s = sql.Identifier(schema)
        conn = connect(target, timeout=connect_timeout, settings={"lock_timeout": str(LOCK_TIMEOUT_MS)})
        try:
            with backend_errors(target, "checking the ledger schema"):
                if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".audit_head',)).fetchone()[0] is not None:
                    # Already set up (maybe by an owner role): a worker role without CREATE
                    # rights must still be able to run `runlease init` on its machine.
                    return
            with backend_errors(target, "initializing the ledger schema"), conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"runlease-ledger-init:{schema}",))
                for statement in _DDL:
                    conn.execute(sql.SQL(statement).format(s=s))
                meta = sql.SQL("{}.meta").format(s)
                conn.execute(sql.SQL("INSERT INTO {} (key, value) VALUES ('schema_version', %s), ('ledger_id', %s) "
                                     "ON CONFLICT (key) DO NOTHING").format(meta),
                             (str(SCHEMA_VERSION), str(uuid.uuid4())))
                ledger_id = conn.execute(sql.SQL("SELECT value FROM {} WHERE key = 'ledger_id'").format(meta)).fetchone()[0]
                conn.execute(sql.SQL("INSERT INTO {}.audit_head (id, seq, chain) VALUES (true, 0, %s) "
                                     "ON CONFLICT (id) DO NOTHING").format(s), (genesis(ledger_id),))
                have = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE key LIKE 'key_check:%%'").format(meta)).fetchone()[0]
                if not have:
                    conn.execute(sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s)").format(meta),
                                 (_KEY_CHECK_PREFIX + keyring.active_id, keyring.key_check().hex()))
        finally:
            conn.close()

    def _load_ledger_id(self) -> str:
        conn = self._conn()
        with backend_errors(self.target, "opening the ledger"):
            exists = conn.execute("SELECT to_regclass(%s)", (f'"{self.schema}".meta',)).fetchone()[0]
            if exists is None:
                raise ConfigError(
                    f"no runlease ledger in schema {self.schema!r} of the {self.target.describe()}; run `runlease init`"
                )
            rows = dict(conn.execute(self._sql("SELECT key, value FROM {meta} WHERE key IN "
                                               "('schema_version', 'ledger_id')")).fetchall())
        if rows.get("schema_version") not in (str(SCHEMA_VERSION), "1") or "ledger_id" not in rows:
            raise ConfigError(f"ledger schema {self.schema!r} of the {self.target.describe()} has an unknown version; "
                              f"expected {SCHEMA_VERSION}")
        self._legacy = rows["schema_version"] == "1"
        return str(rows["ledger_id"])

    def _upgrade(self) -> None:
        """Version 1 -> 2 in place, once, in one transaction: add ``leases.mac`` and MAC every row.

        Needs the key (checked before) and the schema owner's rights (ALTER TABLE,
        UPDATE on meta); a worker role gets a clear error saying who must run it.
        Rows are vouched for as they are at this moment (docs/ledger.md).
        """
        conn = self._conn()
        try:
            with backend_errors(self.target, "upgrading the ledger schema"), conn.transaction():
                version = conn.execute(self._sql("SELECT value FROM {meta} WHERE key = 'schema_version' FOR UPDATE")
                                       ).fetchone()[0]
                if version == str(SCHEMA_VERSION):
                    self._legacy = False
                    return
                self._refuse_downgrade(conn, version)
                conn.execute(self._sql("ALTER TABLE {leases} ADD COLUMN IF NOT EXISTS mac text"))
                rows = conn.execute(self._sql(f"SELECT {', '.join(_LEASE_FIELDS)} FROM {{leases}}")).fetchall()
                for row in rows:
                    lease = lease_from_row(row)
                    conn.execute(self._sql("UPDATE {leases} SET mac = %s WHERE lease_id = %s"),
                                 (seal_lease(self.auth, lease), lease.lease_id))
                conn.execute(self._sql("UPDATE {meta} SET value = %s WHERE key = 'schema_version'"),
                             (str(SCHEMA_VERSION),))
                conn.execute(self._sql("INSERT INTO {meta} (key, value) VALUES ('format_record', %s) "
                                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                             (self.recorder.encode(SCHEMA_VERSION),))
        except BackendError as err:
            if "SQLSTATE 42501" in str(err):  # insufficient_privilege: not the owner
                raise ConfigError(
                    f"the ledger in schema {self.schema!r} of the {self.target.describe()} predates row "
                    "authentication; run any runlease command once as the role that owns it to upgrade it"
                ) from None
            raise
        self._legacy = False

    def _refuse_downgrade(self, conn: Any, version: str) -> None:
        """A version-1 schema is a downgrade if anything shows it was migrated already.

        Evidence: the ``format_record`` meta row (written at init and at the
        upgrade; no pre-MAC runlease writes it), this machine's signed format
        record, or its anchor in the signed format. Runs inside the upgrade
        transaction, after the version row is locked: a machine that upgraded
        concurrently has committed version 2 by then, so this is never a false alarm.
        """
        row = conn.execute(self._sql("SELECT 1 FROM {meta} WHERE key = 'format_record'")).fetchone()
        evidence = ("the ledger holds a format record (which no pre-MAC runlease writes)" if row is not None
                    else downgrade_evidence(self.recorder.read(self.record_file) if self.record_file else
                                            FormatRecord(present=False), self.anchor_file))
        if evidence:
            raise StoreDowngradedError(
                f"the ledger in schema {self.schema!r} of the {self.target.describe()} is in the pre-MAC format "
                f"(schema version {version}), but {evidence}: someone downgraded it to have forged lease rows "
                "authenticated; refusing to open or upgrade it")

    def _audit_downgrade(self, err: StoreDowngradedError) -> None:
        """Record the refused downgrade in the shared chain, if that still works (best effort)."""
        try:
            self.append(AuditEvent(action="ledger_open", outcome=Outcome.ERROR, principal="runlease:upgrade",
                                   detail={"error": type(err).__name__, "table": "meta", "row": "schema_version"}))
            err.audited = True  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the refusal itself must not be masked by a failing audit
            pass

    def _record_format(self) -> None:
        """Leave the signed records that this ledger's rows are authenticated: a meta row, and this machine's file.

        The meta row is only inserted if missing (a worker may INSERT into meta,
        never replace); the file is renewed when missing or stale.
        """
        if self._legacy:
            return
        conn = self._conn()
        with backend_errors(self.target, "recording the ledger format"):
            have = conn.execute(self._sql("SELECT 1 FROM {meta} WHERE key = 'format_record'")).fetchone()
        if have is None:
            try:
                with backend_errors(self.target, "recording the ledger format"):
                    conn.execute(self._sql("INSERT INTO {meta} (key, value) VALUES ('format_record', %s) "
                                           "ON CONFLICT (key) DO NOTHING"), (self.recorder.encode(SCHEMA_VERSION),))
            except BackendError as err:
                if "SQLSTATE 42501" not in str(err):  # a role without INSERT on meta leaves it to the next one
                    raise
        if self.record_file is not None:
            self.recorder.ensure(self.record_file, SCHEMA_VERSION)

    def _check_key(self) -> set[str]:
        """Refuse a KEK that is not the one the ledger's events are chained with.

        A worker with a different key would append events nobody else can
        verify; better to fail at open, naming the ledger.
        """
        conn = self._conn()
        with backend_errors(self.target, "checking the master key"):
            rows = conn.execute(self._sql("SELECT key, value FROM {meta} WHERE key LIKE 'key_check:%%'")).fetchall()
        known = {k[len(_KEY_CHECK_PREFIX):]: bytes.fromhex(v) for k, v in rows}
        if not any(self.keyring.verify_key_check(kid, tok) for kid, tok in known.items() if kid in self.keyring):
            raise MasterKeyError(
                f"master key does not match the {self.target.describe()}: loaded "
                f"{', '.join(self.keyring.ids)}, the ledger was set up with {', '.join(sorted(known)) or 'no key'}"
            )
        if self.keyring.active_id not in known:  # after `key rotate`: vouch for the new active key
            with backend_errors(self.target, "registering the active key"):
                conn.execute(self._sql("INSERT INTO {meta} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"),
                             (_KEY_CHECK_PREFIX + self.keyring.active_id, self.keyring.key_check().hex()))
        return set(known)

    def _sign_legacy_anchor(self) -> None:
        """Sign this machine's unsigned (pre-#12) anchor if it names a genuine event of the chain.

        Safe here: a per-machine anchor may lag the head anyway, and the chain
        value it must match is itself authenticated by the chain's HMAC.
        """
        if self.anchor_file is None:
            return
        legacy = read_legacy_anchor(self.anchor_file)
        if legacy is None or legacy.seq < 1:
            return
        conn = self._conn()
        with backend_errors(self.target, "reading the audit chain"):
            row = conn.execute(self._sql("SELECT chain FROM {audit} WHERE seq = %s"), (legacy.seq,)).fetchone()
        if row is not None and row[0] == legacy.chain:
            write_anchor(self.anchor_file, legacy, self.anchor_signer)

    # -- plumbing ---------------------------------------------------------------

    def _sql(self, template: str) -> "sql.Composed":
        from psycopg import sql

        return sql.SQL(template).format(**self._t)

    def _conn(self) -> "psycopg.Connection[Any]":
        if os.getpid() != self._pid:
            # Forked (an executor that forks task processes): the parent's sockets are not
            # ours to use or to close; forget them and connect afresh.
            self._pid = os.getpid()
            self._local = _ThreadState()
            self._all_conns = []
        conn = self._local.conn
        if conn is None or conn.closed or conn.broken:
            conn = connect(
                self.target, timeout=self.connect_timeout,
                settings={"lock_timeout": str(LOCK_TIMEOUT_MS), "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                          "TimeZone": "UTC"},
            )
            self._local.conn = conn
            with self._lock:
                self._all_conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[list[Callable[[], None]]]:
        """One transaction (nested calls join it); hooks run only after it committed."""
        if self._local.hooks is not None:
            yield self._local.hooks
            return
        conn = self._conn()
        hooks: list[Callable[[], None]] = []
        with backend_errors(self.target, "writing to the ledger"):
            with conn.transaction():
                self._local.hooks = hooks
                try:
                    yield hooks
                finally:
                    self._local.hooks = None
        for hook in hooks:
            hook()

    def atomic(self) -> Any:
        """A ledger transaction. Writes to a *local* store inside it commit on their own (see docs/ledger.md)."""
        return self._write()

    def close(self) -> None:
        with self._lock:
            conns, self._all_conns = self._all_conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask anything
                pass
        self._local.conn = None

    # -- audit ------------------------------------------------------------------

    def append(self, *events: AuditEvent) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        with self._write() as hooks:
            conn = self._conn()
            seq, previous = conn.execute(self._sql("SELECT seq, chain FROM {audit_head} WHERE id FOR UPDATE")).fetchone()
            kid = self.keyring.active_id
            key = self.keyring.audit_key(kid)
            rows = []
            for event in events:
                seq += 1
                stamped = event.model_copy(update={"seq": seq, "key_id": kid})
                row = event_row(stamped)
                previous = link(key, previous, row)
                rows.append(tuple(row[f] for f in _AUDIT_FIELDS[:-1]) + (previous,))
                out.append(stamped.model_copy(update={"chain": previous}))
            with conn.cursor() as cur:
                cur.executemany(
                    self._sql(f"INSERT INTO {{audit}} ({', '.join(_AUDIT_FIELDS)}) "
                              f"VALUES ({', '.join(['%s'] * len(_AUDIT_FIELDS))})"),
                    rows,
                )
            conn.execute(self._sql("UPDATE {audit_head} SET seq = %s, chain = %s WHERE id"), (seq, previous))
            if self.anchor_file is not None:
                anchor, path = Anchor(seq, previous), self.anchor_file
                hooks.append(lambda: advance_anchor(path, anchor, self.anchor_signer))
        return out

    def _audit_rows(self, conn: Any, where: str = "TRUE", params: tuple[Any, ...] = (),
                    limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Rows in seq order, fetched in pages by seq (no long-lived cursor, bounded memory)."""
        after = 0
        remaining = limit
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            cur = conn.execute(
                self._sql(f"SELECT {', '.join(_AUDIT_FIELDS)} FROM {{audit}} WHERE seq > %s AND ({where}) "
                          "ORDER BY seq LIMIT %s"),
                (after, *params, page),
            )
            batch = cur.fetchall()
            for values in batch:
                yield dict(zip(_AUDIT_FIELDS, values, strict=True))
            if len(batch) < page:
                return
            after = int(batch[-1][0])
            if remaining is not None:
                remaining -= len(batch)

    def events(self, query: AuditQuery) -> Iterator[AuditEvent]:
        clauses, params = ["seq > %s"], [query.after_seq]
        for column in ("run_id", "path", "principal", "action"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        conn = self._conn()
        with backend_errors(self.target, "reading audit events"):
            for row in self._audit_rows(conn, " AND ".join(clauses), tuple(params), query.limit or None):
                row["detail"] = json.loads(row["detail"])
                yield AuditEvent.model_validate(row)

    def verify(self) -> VerifyResult:
        """Walk the chain in one REPEATABLE READ snapshot; check the head row and this machine's anchor."""
        def key_for(kid: str) -> bytes | None:
            return self.keyring.audit_key(kid) if kid in self.keyring else None

        conn = self._conn()
        last: dict[str, Any] = {"seq": 0, "chain": genesis(self.ledger_id)}

        def tracked(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for row in rows:
                last["seq"], last["chain"] = int(row["seq"]), str(row["chain"])
                yield row

        anchor = read_anchor(self.anchor_file, self.anchor_signer) if self.anchor_file is not None else None
        with backend_errors(self.target, "verifying the audit chain"), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            head_seq, head_chain = conn.execute(self._sql("SELECT seq, chain FROM {audit_head} WHERE id")).fetchone()
            result = verify_chain(tracked(self._audit_rows(conn)), key_for, genesis(self.ledger_id), anchor)
        if not result.ok:
            return result
        if head_seq > last["seq"]:
            return VerifyResult(False, result.checked, last["seq"] + 1,
                                f"log truncated: the chain head records {head_seq} events, the table holds {last['seq']}")
        if head_seq < last["seq"] or head_chain != last["chain"]:
            return VerifyResult(False, result.checked, head_seq,
                                "the chain head row does not match the newest event (head rewritten)")
        return result

    def audit_key_ids(self) -> set[str]:
        conn = self._conn()
        with backend_errors(self.target, "reading audit key ids"):
            return {r[0] for r in conn.execute(self._sql("SELECT DISTINCT key_id FROM {audit}"))}

    # -- leases -----------------------------------------------------------------

    def record_lease(self, lease: Lease, event: AuditEvent) -> AuditEvent:
        from psycopg.types.json import Jsonb

        with self._write():
            self._conn().execute(
                self._sql(f"INSERT INTO {{leases}} ({', '.join(_LEASE_FIELDS)}, mac) "
                          f"VALUES ({', '.join(['%s'] * (len(_LEASE_FIELDS) + 1))})"),
                (*lease_values(lease, lambda at: at, Jsonb), seal_lease(self.auth, lease)),
            )
            return self.append(event)[0]

    def get_lease(self, lease_id: str) -> Lease:
        return self._verified_leases.lease(self._lease_row(lease_id))

    def lease_state(self, lease_id: str) -> LeaseState:
        return self._verified_leases.state(self._lease_row(lease_id))

    def _lease_row(self, lease_id: str) -> tuple[Any, ...]:
        conn = self._conn()
        with backend_errors(self.target, "reading a lease"):
            row = conn.execute(self._sql(f"SELECT {', '.join(_LEASE_FIELDS)}, mac FROM {{leases}} WHERE lease_id = %s"),
                               (lease_id,)).fetchone()
        if row is None:
            raise LeaseNotFoundError(f"lease {lease_id} not found")
        return tuple(row)

    def find_leases(
        self,
        *,
        pipeline: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        try_number: int | None = None,
        map_index: int | None = None,
        state: LeaseState | None = None,
        expired_before: datetime | None = None,
        limit: int | None = None,
        tampered: list[str] | None = None,
    ) -> list[Lease]:
        where, params = lease_filter_sql(
            "%s", lambda at: at, pipeline=pipeline, run_id=run_id, task_id=task_id, try_number=try_number,
            map_index=map_index, state=state, expired_before=expired_before,
        )
        text = f"SELECT {', '.join(_LEASE_FIELDS)}, mac FROM {{leases}}{where} ORDER BY issued_at, lease_id"
        if limit:
            text += " LIMIT %s"
            params.append(int(limit))
        conn = self._conn()
        with backend_errors(self.target, "listing leases"):
            rows = conn.execute(self._sql(text), params).fetchall()
        return authenticated_leases(rows, self.auth, tampered)

    def _rewrite_active(self, lease_id: str, update: dict[str, Any]) -> bool:
        """Apply ``update`` to an active, authenticated lease (row locked) and re-MAC it."""
        conn = self._conn()
        row = conn.execute(self._sql(f"SELECT {', '.join(_LEASE_FIELDS)}, mac FROM {{leases}} "
                                     "WHERE lease_id = %s FOR UPDATE"), (lease_id,)).fetchone()
        new = updated_active_lease(row, self.auth, update)
        if new is None:
            return False
        conn.execute(
            self._sql("UPDATE {leases} SET state = %s, revoked_at = %s, revoke_reason = %s, expires_at = %s, "
                      "mac = %s WHERE lease_id = %s AND state = 'active'"),
            (new.state.value, new.revoked_at, new.revoke_reason, new.expires_at, seal_lease(self.auth, new),
             lease_id),
        )
        return True

    def close_lease(self, lease_id: str, state: LeaseState, reason: str, at: datetime, event: AuditEvent) -> bool:
        with self._write():
            changed = self._rewrite_active(lease_id, {"state": state, "revoked_at": at.astimezone(timezone.utc),
                                                      "revoke_reason": reason})
            if changed:
                self.append(event)
        return changed

    def extend_lease(self, lease_id: str, expires_at: datetime, event: AuditEvent) -> bool:
        with self._write():
            changed = self._rewrite_active(lease_id, {"expires_at": expires_at.astimezone(timezone.utc)})
            if changed:
                self.append(event)
        return changed
