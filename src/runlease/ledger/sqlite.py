"""The local ledger: leases and the audit chain in the store's SQLite file.

Appending an event reads the previous chain value and inserts the new row
inside one ``BEGIN IMMEDIATE`` transaction, so concurrent processes can never
fork the chain: SQLite's write lock serialises them. Sharing the store's
:class:`~runlease.clients.db.Database` means a secret write and its audit event
commit together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runlease.audit.chain import (
    Anchor,
    AnchorSigner,
    VerifyResult,
    advance_anchor,
    event_row,
    genesis,
    link,
    read_anchor,
    verify_chain,
    write_anchor,
)
from runlease.keys.crypto import Keyring
from runlease.clients.db import Database, Transaction
from runlease.errors import LeaseNotFoundError, MasterKeyError
from runlease.ledger.base import (
    LEASE_FIELDS,
    AuditQuery,
    VerifiedLeaseRows,
    authenticated_leases,
    lease_filter_sql,
    lease_values,
    ledger_scope,
    seal_lease,
    updated_active_lease,
)
from runlease.models import AuditEvent, Lease, LeaseState
from runlease.integrity.rowauth import RowAuthenticator

#: How many lease states lease_state remembers (cleared when full).
LEASE_STATE_MEMO_MAX = 1024
_LEASE_COLUMNS = ", ".join(LEASE_FIELDS)
_AUDIT_COLUMNS = (
    "seq, ts, action, outcome, path, version, lease_id, orchestrator, pipeline, run_id, task_id, try_number, "
    "map_index, principal, detail, key_id, chain"
)


def ts(dt: datetime) -> str:
    """One sortable text form for every stored time (UTC, microseconds)."""
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


class SqliteLedger:
    """Ledger over a :class:`Database`; the anchor file guards against tail truncation."""

    def __init__(self, db: Database, keyring: Keyring, anchor_file: Path) -> None:
        self.db = db
        self.keyring = keyring
        self.anchor_file = anchor_file
        row = db.connection().execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        if row is None:
            raise MasterKeyError(f"store {db.path} was never initialized; run `runlease init`")
        self.store_id = str(row[0])
        known = {k.split(":", 1)[1] for (k,) in db.connection().execute(
            "SELECT key FROM meta WHERE key LIKE 'key_check:%'")} | {keyring.active_id}
        self.auth = RowAuthenticator(keyring, ledger_scope(self.store_id), known)
        #: Lease rows already authenticated by this process (the lease cache's per-hit check).
        self._verified_leases = VerifiedLeaseRows(self.auth)
        #: Lease states read by this process, with the database's change stamp at the time (lease_state).
        self._lease_states: dict[str, tuple[tuple[int, int, int], LeaseState]] = {}
        self.anchor_signer = AnchorSigner(keyring, ledger_scope(self.store_id))

    def atomic(self) -> AbstractContextManager[Transaction]:
        return self.db.write()

    # -- audit ----------------------------------------------------------------

    def append(self, *events: AuditEvent) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        with self.db.write() as tx:
            last = tx.conn.execute("SELECT seq, chain FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, previous = (int(last[0]), str(last[1])) if last else (0, genesis(self.store_id))
            if tx.audit_tip_before is None:
                tx.audit_tip_before = seq
            tip_before = tx.audit_tip_before
            kid = self.keyring.active_id
            key = self.keyring.audit_key(kid)
            for event in events:
                seq += 1
                stamped = event.model_copy(update={"seq": seq, "key_id": kid})
                row = event_row(stamped)
                previous = link(key, previous, row)
                tx.conn.execute(
                    f"INSERT INTO audit({_AUDIT_COLUMNS}) VALUES ({','.join('?' * 17)})",
                    (*[row[c.strip()] for c in _AUDIT_COLUMNS.split(",")[:-1]], previous),
                )
                out.append(stamped.model_copy(update={"chain": previous}))
            anchor = Anchor(seq, previous)
            # Several appends in one transaction (a grouped rotation) move the anchor once, to the last event.
            tx.on_commit_latest("audit-anchor", lambda: advance_anchor(
                self.anchor_file, anchor, self.anchor_signer, previous_seq=tip_before))
        return out

    def events(self, query: AuditQuery) -> Iterator[AuditEvent]:
        clauses, params = ["seq > ?"], [query.after_seq]
        for column in ("run_id", "path", "principal", "action"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq"
        if query.limit:
            sql += f" LIMIT {int(query.limit)}"
        cursor = self.db.connection().execute(sql, params)
        names = [c.strip() for c in _AUDIT_COLUMNS.split(",")]
        for values in cursor:
            row = dict(zip(names, values))
            row["detail"] = json.loads(row["detail"])
            yield AuditEvent.model_validate(row)

    def _raw_rows(self) -> Iterator[dict[str, Any]]:
        names = [c.strip() for c in _AUDIT_COLUMNS.split(",")]
        for values in self.db.connection().execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq"):
            yield dict(zip(names, values))

    def verify(self) -> VerifyResult:
        def key_for(kid: str) -> bytes | None:
            return self.keyring.audit_key(kid) if kid in self.keyring else None

        with self.db.read() as conn:
            with self.db.snapshot_between_writes():
                # The anchor must be read at the very state of the snapshot: every writer advances it
                # after its commit, inside the same writer turn this waits for.
                anchor = read_anchor(self.anchor_file, self.anchor_signer)
            holds_anything = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM versions) "
                "OR EXISTS (SELECT 1 FROM leases)").fetchone()[0]
            return verify_chain(self._raw_rows(), key_for, genesis(self.store_id), anchor,
                                anchor_required=bool(holds_anything), anchor_at_tip=True)

    def reanchor(self) -> tuple[Anchor | None, Anchor]:
        """Sign an anchor at the chain's current tip, after an operator checked why it was off.

        Only when the chain itself verifies; the old and new anchor go into an
        ``audit_reanchor`` event, so re-anchoring is never silent.
        """
        from runlease.errors import IntegrityError
        from runlease.models import AuditEvent

        key_for = lambda kid: self.keyring.audit_key(kid) if kid in self.keyring else None  # noqa: E731
        with self.db.write() as tx:
            chain = verify_chain(self._raw_rows(), key_for, genesis(self.store_id), None)
            if not chain.ok:
                raise IntegrityError(f"not re-anchoring: {chain.describe()}")
            old = read_anchor(self.anchor_file, self.anchor_signer)
            event = self.append(AuditEvent(action="audit_reanchor", principal="runlease:reanchor", detail={
                "previous_anchor_seq": None if old is None else old.seq,
                "previous_anchor_problem": None if old is None else old.problem or None}))[0]
            new = Anchor(int(event.seq or 0), str(event.chain))
            tx.on_commit_latest("audit-anchor", lambda: write_anchor(self.anchor_file, new, self.anchor_signer))
        return old, new

    def audit_key_ids(self) -> set[str]:
        return {r[0] for r in self.db.connection().execute("SELECT DISTINCT key_id FROM audit")}

    # -- leases ---------------------------------------------------------------

    def record_lease(self, lease: Lease, event: AuditEvent) -> AuditEvent:
        with self.db.write() as tx:
            tx.conn.execute(
                f"INSERT INTO leases({_LEASE_COLUMNS}, mac) VALUES ({','.join('?' * 19)})",
                (*lease_values(lease, ts, lambda state: json.dumps(state, sort_keys=True)),
                 seal_lease(self.auth, lease)),
            )
            return self.append(event)[0]

    def get_lease(self, lease_id: str) -> Lease:
        return self._verified_leases.lease(self._lease_row(lease_id))

    def lease_state(self, lease_id: str) -> LeaseState:
        """As :meth:`get_lease` ``.state``; while nothing was committed since this thread last read it
        (``Database.change_stamp``: one ``PRAGMA``), the state read then is the answer."""
        stamp = self.db.change_stamp()
        if stamp is not None:
            seen = self._lease_states.get(lease_id)
            if seen is not None and seen[0] == stamp:
                return seen[1]
        state = self._verified_leases.state(self._lease_row(lease_id))
        if stamp is not None:
            if len(self._lease_states) >= LEASE_STATE_MEMO_MAX:
                self._lease_states.clear()
            self._lease_states[lease_id] = (stamp, state)
        return state

    def _lease_row(self, lease_id: str) -> tuple[Any, ...]:
        row = self.db.connection().execute(
            f"SELECT {_LEASE_COLUMNS}, mac FROM leases WHERE lease_id=?", (lease_id,)
        ).fetchone()
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
            "?", ts, pipeline=pipeline, run_id=run_id, task_id=task_id, try_number=try_number,
            map_index=map_index, state=state, expired_before=expired_before,
        )
        sql = f"SELECT {_LEASE_COLUMNS}, mac FROM leases{where} ORDER BY issued_at, lease_id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return authenticated_leases(self.db.connection().execute(sql, params), self.auth, tampered)

    def _rewrite_active(self, tx: Transaction, lease_id: str, update: dict[str, Any]) -> bool:
        """Apply ``update`` to an active, authenticated lease and re-MAC it; False if not active."""
        row = tx.conn.execute(f"SELECT {_LEASE_COLUMNS}, mac FROM leases WHERE lease_id=?", (lease_id,)).fetchone()
        new = updated_active_lease(row, self.auth, update)
        if new is None:
            return False
        tx.conn.execute(
            "UPDATE leases SET state=?, revoked_at=?, revoke_reason=?, expires_at=?, mac=? "
            "WHERE lease_id=? AND state='active'",
            (new.state.value, ts(new.revoked_at) if new.revoked_at else None, new.revoke_reason,
             ts(new.expires_at), seal_lease(self.auth, new), lease_id),
        )
        return True

    def close_lease(self, lease_id: str, state: LeaseState, reason: str, at: datetime, event: AuditEvent) -> bool:
        with self.db.write() as tx:
            changed = self._rewrite_active(tx, lease_id, {"state": state, "revoked_at": at.astimezone(timezone.utc),
                                                          "revoke_reason": reason})
            if changed:
                self.append(event)
        return changed

    def extend_lease(self, lease_id: str, expires_at: datetime, event: AuditEvent) -> bool:
        with self.db.write() as tx:
            changed = self._rewrite_active(tx, lease_id, {"expires_at": expires_at.astimezone(timezone.utc)})
            if changed:
                self.append(event)
        return changed
