"""Listings that survive a tampered row: the good rows, the bad ones named, audited, then exit 7.

Why: acting on a row demands that *it* authenticates, so every action path
raises on the first bad row. A listing acts on nothing; failing as a whole
there would hide every genuine row behind one forged one (an attacker could
blind ``ls``/``leases`` for everyone with a single INSERT). So ``ls``,
``history`` and ``leases`` show what authenticates, mark what does not as
TAMPERED (table and row, never a value), audit each such row like any other
tampering, and end with an :class:`IntegrityError` (exit 7) so scripts still
see that something is wrong.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from runlease.broker import Broker
from runlease.errors import IntegrityError
from runlease.ledger.base import Ledger
from runlease.models import Lease, RunIdentity, SecretInfo, SecretPath, SecretVersion
from runlease.integrity.rowauth import RowKeyNotLoadedError, RowTamperedError
from runlease.store.base import SecretStore
from runlease.store.local import LocalStore

T = TypeVar("T")
Bad = RowTamperedError | RowKeyNotLoadedError


@dataclass
class Listing(Generic[T]):
    """Rows that authenticate, plus ``table row`` names of those that did not."""

    rows: list[T]
    tampered: list[str] = field(default_factory=list)

    def raise_if_tampered(self) -> None:
        """After the listing was shown: exit 7 naming the rows (they were audited already)."""
        if self.tampered:
            raise IntegrityError(
                f"{len(self.tampered)} row(s) failed authentication (changed outside runlease, without the "
                f"master key) and are marked TAMPERED above (audited): {', '.join(self.tampered)}")


def _report(broker: Broker, errors: list[Bad], action: str, actor: RunIdentity | None,
            **fields: Any) -> list[str]:
    names = []
    for err in errors:
        extra = dict(fields)
        if err.table == "secrets":
            extra.setdefault("path", err.row_id)
        elif err.table == "leases":
            extra.setdefault("lease_id", err.row_id)
        broker.report_tampering(err, action, actor, **extra)
        names.append(f"{err.table} {err.row_id}")
    return names


def list_secrets(store: SecretStore, broker: Broker, prefix: str, *, include_deleted: bool,
                 actor: RunIdentity | None) -> Listing[SecretInfo]:
    """``runlease ls``. Remote stores have no row MACs (their ACLs protect them) and list as before."""
    if not isinstance(store, LocalStore):
        return Listing(store.list(prefix, include_deleted=include_deleted))
    bad: list[Bad] = []
    rows = store.list(prefix, include_deleted=include_deleted, tampered=bad)
    return Listing(rows, _report(broker, bad, "list", actor))


def secret_history(store: SecretStore, broker: Broker, path: SecretPath,
                   actor: RunIdentity | None) -> Listing[SecretVersion]:
    """``runlease history``: authenticated versions; a tampered secret row leaves them without labels."""
    if not isinstance(store, LocalStore):
        return Listing(store.history(path))
    bad: list[Bad] = []
    rows = store.history(path, tampered=bad)
    return Listing(rows, _report(broker, bad, "history", actor, path=str(path)))


def find_leases(ledger: Ledger, broker: Broker, actor: RunIdentity | None, **filters: Any) -> Listing[Lease]:
    """``runlease leases``: authenticated leases; forged or edited lease rows named, not shown."""
    ids: list[str] = []
    if "tampered" not in inspect.signature(ledger.find_leases).parameters:
        # runlease serve's client: the server authenticated the rows it answered with.
        return Listing(list(ledger.find_leases(**filters)))
    rows = ledger.find_leases(tampered=ids, **filters)
    return Listing(rows, _report(broker, [RowTamperedError("leases", i) for i in ids], "list_leases", actor))


__all__ = ["Listing", "find_leases", "list_secrets", "secret_history"]
