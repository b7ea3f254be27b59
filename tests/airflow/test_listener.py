"""Revocation logic of the listener against a real ledger: exact task try, exact DAG, never a neighbour."""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity

from runlease_airflow import listener
from runlease_airflow.secrets import RunleaseBackend

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
RUN = "scheduled__2026-01-01T00:00:00+00:00"  # the same run id in two DAGs, as on a shared schedule


def who(dag: str, task: str = "load", try_number: int = 1, map_index: int | None = None) -> RunIdentity:
    return RunIdentity(orchestrator="airflow", pipeline=dag, run_id=RUN, task_id=task, try_number=try_number,
                       map_index=map_index)


@pytest.fixture()
def backend(tmp_path: Path) -> RunleaseBackend:
    from runlease.runtime import init_home
    from runlease.settings import Settings

    runtime, _ = init_home(Settings(home=tmp_path / "home"))
    runtime.broker.put("dev/variables/token", "listener-test-token", ADMIN)
    runtime.close()
    return RunleaseBackend(home=str(tmp_path / "home"))


def state_of(backend: RunleaseBackend, lease_id: str) -> LeaseState:
    return backend.broker.ledger.get_lease(lease_id).state


def test_task_end_revokes_only_that_try_of_that_dag(backend: RunleaseBackend) -> None:
    broker = backend.broker
    mine = broker.lease("dev/variables/token", who("dag_a"), ttl=600)
    other_dag = broker.lease("dev/variables/token", who("dag_b"), ttl=600)
    next_try = broker.lease("dev/variables/token", who("dag_a", try_number=2), ttl=600)
    count = listener.revoke_task_try("dag_a", RUN, "load", 1, None, "success", states=[backend.state])
    assert count == 1
    assert state_of(backend, mine.lease_id) is LeaseState.REVOKED
    assert state_of(backend, other_dag.lease_id) is LeaseState.ACTIVE
    assert state_of(backend, next_try.lease_id) is LeaseState.ACTIVE
    revoke = list(broker.ledger.events(AuditQuery(action="revoke")))
    assert revoke[0].principal == listener.TASK_ACTOR and revoke[0].detail["reason"] == "task success"


def test_task_end_of_one_mapped_instance_leaves_its_siblings(backend: RunleaseBackend) -> None:
    broker = backend.broker
    zero = broker.lease("dev/variables/token", who("dag_a", map_index=0), ttl=600)
    one = broker.lease("dev/variables/token", who("dag_a", map_index=1), ttl=600)
    assert listener.revoke_task_try("dag_a", RUN, "load", 1, 0, "failed", states=[backend.state]) == 1
    assert state_of(backend, zero.lease_id) is LeaseState.REVOKED
    assert state_of(backend, one.lease_id) is LeaseState.ACTIVE


def test_run_end_backstop_revokes_what_the_run_still_holds_in_that_dag_only(backend: RunleaseBackend) -> None:
    broker = backend.broker
    held = [broker.lease("dev/variables/token", who("dag_a", task=t), ttl=600) for t in ("extract", "load")]
    other_dag = broker.lease("dev/variables/token", who("dag_b"), ttl=600)
    assert listener.revoke_dag_run("dag_a", RUN, "failed", states=[backend.state]) == 2
    assert {state_of(backend, lease.lease_id) for lease in held} == {LeaseState.REVOKED}
    assert state_of(backend, other_dag.lease_id) is LeaseState.ACTIVE
    assert listener.revoke_dag_run("dag_a", RUN, "failed", states=[backend.state]) == 0  # idempotent


def test_hooks_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("ledger is gone")

    monkeypatch.setattr(listener, "revoke_task_try", broken)
    monkeypatch.setattr(listener, "revoke_dag_run", broken)

    # Plain attribute holders standing in for the TI / DagRun Airflow passes: this test is
    # about the hooks swallowing a failure of runlease's own code, not about Airflow.
    class Ti:
        dag_id, run_id, task_id, try_number, map_index, state = "d", "r", "t", 1, -1, "failed"

    class Run:
        dag_id, run_id = "d", "r"

    listener.on_task_instance_success(None, Ti())
    listener.on_task_instance_failed(None, Ti(), RuntimeError("x"))
    listener.on_dag_run_failed(Run(), "failed")
