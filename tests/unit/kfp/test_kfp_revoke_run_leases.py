"""revoke_run_leases (the exit task) on python_func against a real embedded store."""

# No `from __future__ import annotations`: kfp reads component annotations as live types.

import pytest
from kfp import dsl

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState
from runlease_kfp import revoke_run_leases
from runlease_kfp.errors import RunIdentityError
from runlease_kfp.run_cleanup import EXIT_REASON

from kfp_unit_support import StockedHome, identity_args


def test_revoke_run_leases_revokes_only_this_runs_active_leases(stocked_home: StockedHome,
                                                                run_with_leases: dict[str, str]) -> None:
    count = revoke_run_leases.python_func(**identity_args("r1", "revoke-run-leases"))
    assert count == 1
    rt = stocked_home.runtime()
    try:
        left = rt.ledger.get_lease(run_with_leases["left"])
        other = rt.ledger.get_lease(run_with_leases["other"])
        done = rt.ledger.get_lease(run_with_leases["done"])
        [event] = [e for e in rt.ledger.events(AuditQuery(run_id="r1", action="revoke"))
                   if e.lease_id == run_with_leases["left"]]
    finally:
        rt.close()
    assert left.state is LeaseState.REVOKED and left.revoke_reason == EXIT_REASON
    assert other.state is LeaseState.ACTIVE
    assert done.revoke_reason == "kfp component exited"
    # The event keeps the lease's own task, and names the exit task as the one who revoked.
    assert event.task_id == "train-model" and event.principal == "kfp:training:revoke-run-leases"
    assert revoke_run_leases.python_func(**identity_args("r1", "revoke-run-leases")) == 0  # idempotent


def test_revoke_run_leases_refuses_an_unsubstituted_run_id(stocked_home: StockedHome,
                                                           run_with_leases: dict[str, str]) -> None:
    args = identity_args(dsl.PIPELINE_JOB_ID_PLACEHOLDER, "revoke-run-leases")
    with pytest.raises(RunIdentityError, match="whole parameter value"):
        revoke_run_leases.python_func(**args)
    rt = stocked_home.runtime()
    try:
        assert rt.ledger.get_lease(run_with_leases["left"]).state is LeaseState.ACTIVE
    finally:
        rt.close()


def test_revoke_run_leases_is_scoped_to_its_own_pipeline(stocked_home: StockedHome,
                                                         run_with_leases: dict[str, str]) -> None:
    """A run id alone may name another pipeline's run too: the exit task revokes only its pipeline's leases."""
    from runlease.models import RunIdentity

    rt = stocked_home.runtime()
    try:
        elsewhere = rt.broker.lease("dev/connections/warehouse",
                                    RunIdentity(orchestrator="kfp", pipeline="scoring", run_id="r1", task_id="t"), 600)
    finally:
        rt.close()
    assert revoke_run_leases.python_func(**identity_args("r1", "revoke-run-leases")) == 1
    rt = stocked_home.runtime()
    try:
        assert rt.ledger.get_lease(elsewhere.lease_id).state is LeaseState.ACTIVE
        assert rt.ledger.get_lease(run_with_leases["left"]).state is LeaseState.REVOKED
    finally:
        rt.close()
