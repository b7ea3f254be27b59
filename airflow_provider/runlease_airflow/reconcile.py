"""API-server mode backstops: revoke what Airflow's metadata DB says has ended, and expire past-TTL leases.

In API-server mode the API server revokes a try's leases when it records the
try's end (:mod:`runlease_airflow.api_server`). Two ends never pass through
it: a DAG run's end (the scheduler decides it, and has no runlease in this
mode), and a try the scheduler fails directly in the DB because its worker
died with its supervisor (heartbeat timeout). So the API server also sweeps,
every :data:`SWEEP_INTERVAL_SECONDS`, from a daemon thread started with its
first request:

1. leases past their TTL are marked expired (``Broker.sweep_expired``);
2. every active Airflow lease is checked against the metadata DB, and revoked
   when its DAG run has finished (``dag run success`` / ``dag run failed``) or
   its try has ended (the live task instance is at a later try, or at this try
   in an ended state -- ``task <state>``).

A lease whose run the DB does not know (deleted, or issued outside this
Airflow) is left to its TTL. Each API server process sweeps; revoking is
idempotent (only active leases are looked at), so several replicas are fine.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 60.0
SWEEP_ACTOR = "runlease-airflow:api-server-sweep"
FINISHED_RUN_STATES = frozenset({"success", "failed"})

_started = False
_start_lock = threading.Lock()


def _value(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def ended_reasons(keys: set[tuple[str, str, str | None, int | None, int | None]]) -> dict[tuple, str]:
    """For (dag_id, run_id, task_id, try_number, map_index) keys, why each one has ended (absent: still on)."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    from runlease_airflow.ti_identity import ENDED_STATES

    reasons: dict[tuple, str] = {}
    with create_session() as session:
        runs = {(dag_id, run_id) for dag_id, run_id, *_ in keys}
        run_state = {}
        for dag_id, run_id in runs:
            state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            run_state[(dag_id, run_id)] = _value(state)
        for key in keys:
            dag_id, run_id, task_id, try_number, map_index = key
            state = run_state[(dag_id, run_id)]
            if state in FINISHED_RUN_STATES:
                reasons[key] = f"dag run {state}"
                continue
            if state is None or task_id is None or try_number is None:
                continue
            live = session.execute(
                select(TI.try_number, TI.state).where(
                    TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id,
                    TI.map_index == (-1 if map_index is None else map_index))
            ).first()
            if live is None:
                continue
            if live.try_number is not None and int(live.try_number) > try_number:
                reasons[key] = "task try superseded"
            elif _value(live.state) in ENDED_STATES:
                reasons[key] = f"task {_value(live.state)}"
    return reasons


def sweep(states: list[Any]) -> int:
    """One pass over ``states`` (ProcessState of each configured backend); returns leases closed."""
    from runlease.models import LeaseState, RunIdentity

    from runlease_airflow.lease_cache import task_key

    actor = RunIdentity(orchestrator="airflow", pipeline="api-server", principal=SWEEP_ACTOR)
    closed = 0
    for state in states:
        broker = state.runtime.broker
        closed += broker.sweep_expired()
        leases = [lease for lease in broker.ledger.find_leases(state=LeaseState.ACTIVE)
                  if lease.identity.orchestrator == "airflow" and lease.identity.run_id]
        if not leases:
            continue
        keyed = {lease.lease_id: (lease.identity.pipeline, lease.identity.run_id, lease.identity.task_id,
                                  lease.identity.try_number, lease.identity.map_index) for lease in leases}
        reasons = ended_reasons(set(keyed.values()))
        for lease in leases:
            reason = reasons.get(keyed[lease.lease_id])
            if reason is None:
                continue
            state.leases.drop_task(task_key(lease.identity))
            if broker.revoke(lease.lease_id, reason, actor):
                closed += 1
    return closed


def sweep_server_backends() -> int:
    """One pass over the API server's own RunleaseBackend(s); 0 when runlease is not configured here."""
    from runlease_airflow.api_server import server_backends

    backends = server_backends()
    return sweep([b.state for b in backends]) if backends else 0


def _loop(interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        try:
            closed = sweep_server_backends()
            if closed:
                log.info("runlease: the API server sweep closed %d lease(s)", closed)
        except Exception as err:  # never kill the thread; the next pass retries
            log.warning("runlease: API server sweep failed (%s: %s)", type(err).__name__, err)


def start_sweeper(interval: float = SWEEP_INTERVAL_SECONDS) -> bool:
    """Start the sweeping daemon thread once per process; True if this call started it."""
    global _started
    with _start_lock:
        if _started:
            return False
        _started = True
    threading.Thread(target=_loop, args=(interval,), name="runlease-api-server-sweep", daemon=True).start()
    return True
