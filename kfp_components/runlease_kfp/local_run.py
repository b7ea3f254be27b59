"""Find the run id of a kfp.local pipeline run in the audit trail.

kfp.local draws a fresh random id per pipeline run
(``local/pipeline_orchestrator.py``: ``unique_pipeline_id=placeholder_utils.make_random_id()``)
and substitutes it for ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``, but never returns
it to the caller. The leases the run took carry it, so the way to learn it
is to remember where the audit trail ended before the run and read the
``kfp`` lease events of the pipeline appended after that point. Meant for
local runs (the demo, tests); on a cluster the run id is the KFP run's UUID.
"""

from __future__ import annotations

from runlease.ledger.base import AuditQuery
from runlease.runtime import open_runtime
from runlease.settings import Settings

from runlease_kfp.run_identity import ORCHESTRATOR


def audit_position(settings: Settings | None = None) -> int:
    """The sequence number of the newest audit event (0 for an empty trail)."""
    rt = open_runtime(settings)
    try:
        last = 0
        for event in rt.ledger.events(AuditQuery()):
            last = event.seq or last
        return last
    finally:
        rt.close()


def run_ids_since(position: int, pipeline: str, settings: Settings | None = None) -> list[str]:
    """Run ids of ``pipeline``'s KFP leases recorded after ``position``, in order of first lease."""
    rt = open_runtime(settings)
    try:
        found: dict[str, None] = {}
        for event in rt.ledger.events(AuditQuery(after_seq=position, action="lease")):
            if event.orchestrator == ORCHESTRATOR and event.pipeline == pipeline and event.run_id:
                found.setdefault(event.run_id, None)
        return list(found)
    finally:
        rt.close()
