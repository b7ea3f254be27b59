"""Revoke leases when Airflow says a task try or a DAG run is over.

Task end runs *in the task process*: the Task SDK's ``finalize``
(``airflow/sdk/execution_time/task_runner.py``) calls
``on_task_instance_success``, ``on_task_instance_skipped``, and
``on_task_instance_failed`` for both FAILED and UP_FOR_RETRY, after the task's
own callbacks (which may still use their leases). The scheduler also calls
``on_task_instance_failed`` when it fails a task whose process died
(``airflow/models/taskinstance.py``), so the same hook is the backstop there.

Run end runs where the DAG run's state is decided: ``DagRun.update_state``
(``airflow/models/dagrun.py``) calls ``on_dag_run_success`` /
``on_dag_run_failed`` in the scheduler (or in the process running
``dag.test()``). Whatever the run still holds -- a task killed with SIGKILL
never reached ``finalize`` -- is revoked there; lease TTLs cover the rest.

Leases are found in the ledger by run, task and try and then filtered by DAG
id, because run ids are only unique per DAG (two DAGs on the same schedule
both have ``scheduled__2026-01-01T00:00:00+00:00``). A deferred task's leases
were issued in an earlier process; the ledger query finds them too.

In API-server mode (:mod:`runlease_airflow.api_server`) the API server revokes a
try's leases when it records the try's end; workers have no runlease setting,
so the hooks here find no backend and do nothing, except ``on_starting``, which
widens the task's masking (:mod:`runlease_airflow.worker_masking`).

Listener hooks must never break the task: failures are logged (never with a
value -- none is held here) and swallowed, and TTL remains the backstop.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

log = logging.getLogger(__name__)

#: Airflow's listener hooks are pluggy hooks of project "airflow"
#: (``airflow/_shared/listeners/__init__.py``: ``hookimpl = HookimplMarker("airflow")``).
hookimpl = pluggy.HookimplMarker("airflow")

TASK_ACTOR = "runlease-airflow:task-listener"
RUN_ACTOR = "runlease-airflow:dagrun-listener"


def _bridge_masking() -> None:
    """Cover core-configured log handlers with the Task SDK masker in every process that loads the plugin.

    In API-server mode no RunleaseBackend is built on the worker side, which is where
    :mod:`runlease_airflow.masker_bridge` is otherwise installed; the process that runs the
    LocalExecutor (scheduler, ``dag.test()``) echoes task output through core's handlers.
    Airflow loads plugins -- this module -- there before its executor forks the supervisors.
    """
    try:
        from runlease_airflow.masker_bridge import install_sdk_masker_bridge

        install_sdk_masker_bridge()
    except Exception as err:  # never break the process loading the plugin
        log.debug("runlease: masker bridge not installed (%s)", type(err).__name__)


_bridge_masking()


def _states() -> list[Any]:
    from runlease_airflow.process_state import opened_states

    states = opened_states()
    if states:
        return states
    from runlease_airflow.discovery import configured_backend

    backend = configured_backend()
    return [backend.state] if backend is not None else []


def _map_index(value: Any) -> int | None:
    try:
        index = int(value)
    except (TypeError, ValueError):
        return None
    return None if index < 0 else index


def revoke_task_try(dag_id: str, run_id: str, task_id: str, try_number: int | None,
                    map_index: int | None, outcome: str, states: list[Any] | None = None,
                    actor: str = TASK_ACTOR) -> int:
    """Revoke every active lease of one task try; returns how many were revoked.

    ``states`` defaults to every runtime this process opened (or the configured backend's).
    """
    from runlease.models import RunIdentity

    from runlease_airflow.lease_cache import task_key

    actor = RunIdentity(orchestrator="airflow", pipeline=dag_id, run_id=run_id, task_id=task_id,
                        try_number=try_number, map_index=map_index, principal=actor)
    revoked = 0
    for state in _states() if states is None else states:
        state.leases.drop_task(task_key(actor))
        # map_index None (an unmapped task) filters nothing: a task is either mapped or not.
        revoked += state.runtime.broker.revoke_where(
            f"task {outcome}", actor, pipeline=dag_id, run_id=run_id, task_id=task_id,
            try_number=try_number, map_index=map_index,
        )
    return revoked


def revoke_dag_run(dag_id: str, run_id: str, outcome: str, states: list[Any] | None = None) -> int:
    """Revoke everything a DAG run still holds; returns how many leases were revoked."""
    from runlease.models import RunIdentity

    actor = RunIdentity(orchestrator="airflow", pipeline=dag_id, run_id=run_id, principal=RUN_ACTOR)
    revoked = 0
    for state in _states() if states is None else states:
        state.leases.drop_run(dag_id, run_id)
        revoked += state.runtime.broker.revoke_where(f"dag run {outcome}", actor, pipeline=dag_id, run_id=run_id)
    return revoked


def _task_ended(task_instance: Any, outcome: str) -> None:
    try:
        count = revoke_task_try(
            dag_id=task_instance.dag_id, run_id=task_instance.run_id, task_id=task_instance.task_id,
            try_number=getattr(task_instance, "try_number", None),
            map_index=_map_index(getattr(task_instance, "map_index", -1)), outcome=outcome,
        )
        if count:
            log.info("runlease: revoked %d lease(s) of %s.%s try %s (%s)", count, task_instance.dag_id,
                     task_instance.task_id, getattr(task_instance, "try_number", None), outcome)
    except Exception as err:
        log.warning("runlease: could not revoke the leases of %s.%s (%s: %s); their TTL still applies",
                    getattr(task_instance, "dag_id", "?"), getattr(task_instance, "task_id", "?"),
                    type(err).__name__, err)


def _run_ended(dag_run: Any, outcome: str) -> None:
    try:
        count = revoke_dag_run(dag_id=dag_run.dag_id, run_id=dag_run.run_id, outcome=outcome)
        if count:
            log.info("runlease: revoked %d lease(s) still held by run %s of %s (%s)", count, dag_run.run_id,
                     dag_run.dag_id, outcome)
    except Exception as err:
        log.warning("runlease: could not revoke the leases of run %s (%s: %s); their TTL still applies",
                    getattr(dag_run, "run_id", "?"), type(err).__name__, err)


@hookimpl
def on_starting(component: Any) -> None:
    """In a task process: full masking of what the Execution API returns (runlease_airflow.worker_masking)."""
    if type(component).__name__ != "TaskRunnerMarker":
        return
    try:
        from runlease_airflow.worker_masking import install

        install()
    except Exception as err:  # never break the task; Airflow's own masking still applies
        log.warning("runlease: could not install worker-side masking (%s: %s)", type(err).__name__, err)


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _task_ended(task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    state = getattr(task_instance, "state", None)
    _task_ended(task_instance, str(getattr(state, "value", state) or "failed"))


@hookimpl
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    _task_ended(task_instance, "skipped")


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "failed")
