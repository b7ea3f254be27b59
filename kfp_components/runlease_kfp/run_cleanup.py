"""Revoke what a KFP run still holds: the body of the ``revoke_run_leases`` exit task.

Each ``with runlease_kfp.lease(...)`` block revokes its own lease, but a
step that was SIGKILLed, OOM-killed or evicted never reaches that code. The
pipeline's ``dsl.ExitHandler`` task runs after the body whether it
succeeded or failed (on a cluster; kfp.local skips it after a failure) and
calls :func:`revoke_leases_of_run`, so no lease outlives its run by more
than the exit task's start-up time. The TTL remains the last backstop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from runlease.runtime import open_runtime
from runlease.settings import Settings

from runlease_kfp.run_identity import resolve_identity

EXIT_REASON = "kfp run ended (exit handler)"

_log = logging.getLogger("runlease.kfp")


def revoke_leases_of_run(identity_inputs: Mapping[str, Any], settings: Settings | None = None) -> int:
    """Revoke every active lease of the run named by ``identity_inputs``; return how many.

    The exit task's own identity is the actor on each revoke event (its
    principal), while the events keep the lease's run, task and try.
    Refuses to run without a resolved run id: revoking "every lease of run
    ``{{$.pipeline_job_uuid}}``" would silently revoke nothing.
    """
    who = resolve_identity(inputs=identity_inputs)
    assert who.run_id is not None  # resolve_identity guarantees it
    rt = open_runtime(settings)
    try:
        # Scoped by pipeline too: a run id alone may also name another pipeline's run.
        count = rt.broker.revoke_run(who.run_id, reason=EXIT_REASON, identity=who, pipeline=who.pipeline)
    finally:
        rt.close()
    _log.info("runlease: revoked %d lease(s) still active in run %s", count, who.run_id)
    return count
