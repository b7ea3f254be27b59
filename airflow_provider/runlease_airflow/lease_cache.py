"""The worker-side lease cache: one lease per task try and secret, reused while it is still right.

Airflow's own ``[secrets] use_cache`` does not help in workers (the Task SDK's
``SecretCache`` is only initialised by the DAG processor; see
``airflow/sdk/execution_time/context.py`` ``_get_connection``, "only on dag
processor"), and a task commonly resolves the same connection several times:
once while rendering ``{{ conn.x }}`` templates, again in ``execute`` through a
hook, again in a callback. Without a cache every one of those would be a new
lease and a durable audit write.

A cached lease is served only while all of these hold:

- it belongs to the same task try (dag, run, task, try, map index) and path;
- it is not within :data:`EXPIRY_MARGIN` of its expiry;
- when it was last revalidated more than ``revalidate_seconds`` ago, it is
  revalidated: the store's authoritative ``resolve`` must still point CURRENT
  at the leased version (rotation moved it -> re-lease the new version), and
  the ledger must still show the lease active (revoked from outside -> re-lease,
  which also re-checks policy).

With the default ``revalidate_seconds=0`` every hit revalidates; on the local
store that is an indexed SQLite read of the secret's row plus the ledger's
lease-state check (one ``PRAGMA`` while nothing was committed), far cheaper
than a lease (see docs/benchmarks.md); on AWS and Vault, one request. For a remote store a few seconds is safe: during a
rotation the previous version stays valid for the whole grace period, so a
credential served up to ``revalidate_seconds`` late still works.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta

from runlease.models import Lease, LeaseState, RunIdentity, SecretPath, utcnow

#: A lease this close to expiry is not handed out again; a fresh one is issued.
EXPIRY_MARGIN = timedelta(seconds=30)

TaskKey = tuple[str, str | None, str | None, int | None, int | None]
_Key = tuple[TaskKey, str]


def task_key(identity: RunIdentity) -> TaskKey:
    return (identity.pipeline, identity.run_id, identity.task_id, identity.try_number, identity.map_index)


class LeaseCache:
    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, tuple[Lease, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        identity: RunIdentity,
        path: SecretPath,
        *,
        revalidate_seconds: float,
        current_version: Callable[[SecretPath], int],
        lease_state: Callable[[str], LeaseState],
    ) -> Lease | None:
        """A still-valid cached lease, or None (the caller then leases and :meth:`put` s)."""
        key = (task_key(identity), str(path))
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        lease, checked_at = entry
        if lease.expires_at - EXPIRY_MARGIN <= utcnow():
            self._drop(key)
            self.misses += 1
            return None
        now = time.monotonic()
        if now - checked_at >= revalidate_seconds:
            try:
                # The ledger first: a local read, done while this process's caches are still warm;
                # after the store's network round trip the same code runs measurably slower.
                still_valid = (lease_state(lease.lease_id) is LeaseState.ACTIVE
                               and current_version(path) == lease.version)
            except Exception:
                # e.g. the secret was deleted: forget the plaintext, let the caller see the error
                self._drop(key)
                raise
            if not still_valid:
                self._drop(key)
                self.misses += 1
                return None
            with self._lock:
                if key in self._entries:
                    self._entries[key] = (lease, now)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
        self.hits += 1
        return lease

    def put(self, lease: Lease) -> None:
        key = (task_key(lease.identity), str(lease.path))
        with self._lock:
            self._entries[key] = (lease, time.monotonic())
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop_task(self, key: TaskKey) -> int:
        """Forget every lease of one task try (called when its leases are revoked)."""
        with self._lock:
            doomed = [k for k in self._entries if k[0] == key]
            for k in doomed:
                del self._entries[k]
        return len(doomed)

    def drop_run(self, pipeline: str, run_id: str) -> int:
        with self._lock:
            doomed = [k for k in self._entries if k[0][0] == pipeline and k[0][1] == run_id]
            for k in doomed:
                del self._entries[k]
        return len(doomed)

    def _drop(self, key: _Key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
