"""``with runlease_kfp.lease("prod/connections/warehouse") as conn:`` inside a KFP component.

KFP parameters and outputs are public (pod spec, UI, ML Metadata), so a
component never receives a secret as an input: it leases the credential
itself, at runtime, from the store the pod can reach (settings from the
environment, i.e. the Kubernetes Secret that ``runlease_kfp.StoreAccess``
mounts; under kfp.local the subprocess inherits the caller's environment).

The block:

1. resolves the run identity (:mod:`runlease_kfp.run_identity`) and refuses
   to lease without one;
2. leases through the broker, which checks policy, registers the value with
   the process-wide redactor and writes the audit event;
3. masks that redactor's values in the component's logging and
   stdout/stderr (:mod:`runlease_kfp.output_guard`);
4. revokes the lease when the block ends: normally, on an exception, and on
   SIGTERM (:mod:`runlease_kfp.termination`). The audit reason says which.

Leases still open when the interpreter exits (a block abandoned without
``__exit__``, a lease held by a thread when the main thread was terminated)
are revoked by an ``atexit`` hook. A SIGKILL or an OOM kill skips all of
this; then the run's exit handler (``revoke_run_leases``) and the TTL are
the backstop.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from runlease.models import Lease, RunIdentity, SecretPath, SecretValue, Stage
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

from runlease_kfp.errors import RevocationError
from runlease_kfp.output_guard import guard_process_output
from runlease_kfp.run_identity import resolve_identity
from runlease_kfp.termination import Terminated, guard

_log = logging.getLogger("runlease.kfp")


class _OpenLeases:
    """Leases taken by this process and not yet revoked, for the ``atexit`` backstop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Settings, RunIdentity]] = {}

    def add(self, lease_id: str, settings: Settings, identity: RunIdentity) -> None:
        with self._lock:
            self._entries[lease_id] = (settings, identity)

    def discard(self, lease_id: str) -> None:
        with self._lock:
            self._entries.pop(lease_id, None)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def revoke_leftovers(self, reason: str = "kfp component process exited with the lease open") -> int:
        with self._lock:
            entries, self._entries = dict(self._entries), {}
        done = 0
        for lease_id, (settings, identity) in entries.items():
            try:
                rt = open_runtime(settings)
                try:
                    done += rt.broker.revoke(lease_id, reason, identity)
                finally:
                    rt.close()
            except Exception as err:  # noqa: BLE001 - at exit, report and go on
                _log.error("could not revoke lease %s at exit (%s); the run's exit handler or the TTL will",
                           lease_id, type(err).__name__)
        return done


open_leases = _OpenLeases()
atexit.register(open_leases.revoke_leftovers)


def _exit_reason(err: BaseException | None) -> str:
    if err is None:
        return "kfp component exited"
    if isinstance(err, Terminated):
        return f"kfp component {err}"
    if isinstance(err, GeneratorExit):
        return "kfp component dropped the lease block without exiting it"
    return f"kfp component failed: {type(err).__name__}"


@contextmanager
def lease(
    ref: str | SecretPath,
    *,
    ttl: timedelta | float | int | None = None,
    kind: str = "connections",
    stage: Stage = Stage.CURRENT,
    identity: RunIdentity | None = None,
    settings: Settings | None = None,
) -> Iterator[SecretValue]:
    """Lease ``ref`` for this KFP task; yield the credential; revoke it when the block ends.

    ``ref`` is a full path (``prod/connections/warehouse``) or a bare
    connection id in ``RUNLEASE_ENV``. A connection yields Airflow's
    connection dict, any other kind a string. ``identity`` and ``settings``
    default to what the component's environment says.
    """
    who = identity or resolve_identity()
    rt = open_runtime(settings)
    try:
        guard_process_output(rt.broker.redactor)
        guard.acquire()
        try:
            yield from _held(rt, ref, who, ttl, kind, stage)
        finally:
            guard.release()
    finally:
        rt.close()


def _held(rt: Runtime, ref: str | SecretPath, who: RunIdentity, ttl: timedelta | float | int | None,
          kind: str, stage: Stage) -> Iterator[SecretValue]:
    granted: Lease | None = None
    failure: BaseException | None = None
    try:
        with guard.critical():
            granted = rt.broker.lease(ref, who, ttl, kind=kind, stage=stage)
            open_leases.add(granted.lease_id, rt.settings, who)
        _log.info("runlease: leased %s v%s as %s for run %s task %s, expires %s", granted.path, granted.version,
                  granted.lease_id, who.run_id, who.task_id, granted.expires_at.isoformat(timespec="seconds"))
        yield granted.value
    except BaseException as err:
        failure = err
        raise
    finally:
        if granted is not None:
            _revoke(rt, granted, who, failure)


def _revoke(rt: Runtime, granted: Lease, who: RunIdentity, failure: BaseException | None) -> None:
    reason = _exit_reason(failure)
    with guard.critical(raise_pending=failure is None):
        try:
            rt.broker.revoke(granted.lease_id, reason, who)
        except Exception as err:
            _log.error("runlease: could not revoke lease %s (%s); it stays valid until the run's exit handler "
                       "revokes it or its TTL ends", granted.lease_id, type(err).__name__)
            if failure is None:
                raise RevocationError(f"could not revoke lease {granted.lease_id} of {granted.path}: "
                                      f"{type(err).__name__}") from None
        else:
            open_leases.discard(granted.lease_id)
            _log.info("runlease: revoked lease %s (%s)", granted.lease_id, reason)
