"""DAG runs with ``dag.test()`` in one process: identity in every phase, revocation, retries, denials."""

from __future__ import annotations

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState
from runlease.runtime import Runtime

from runlease_airflow.listener import TASK_ACTOR

pytestmark = pytest.mark.slow


def lease_events(runtime: Runtime, run_id: str) -> list:
    return [e for e in runtime.ledger.events(AuditQuery(run_id=run_id)) if e.action == "lease"]


def test_example_dag_runs_on_connection_ids_only(inprocess_runs) -> None:
    run = inprocess_runs["training_pipeline"]
    assert run["state"] == "success"
    assert set(run["task_states"].values()) == {"success"}


def test_leases_carry_the_real_dag_run_task_and_try(inprocess_runs, site_runtime: Runtime) -> None:
    run = inprocess_runs["training_pipeline"]
    got = {(e.pipeline, e.run_id, e.task_id, e.try_number, e.path) for e in lease_events(site_runtime, run["run_id"])}
    rid = run["run_id"]
    assert got == {
        ("training_pipeline", rid, "extract_features", 1, "dev/connections/warehouse"),
        ("training_pipeline", rid, "extract_features", 1, "dev/variables/feature_store_token"),
        ("training_pipeline", rid, "train_model", 1, "dev/connections/warehouse"),
        ("training_pipeline", rid, "publish_model", 1, "dev/connections/model_registry"),
    }


def test_template_lookups_are_leased_at_render_time_with_the_task_identity(
    inprocess_runs, site_runtime: Runtime
) -> None:
    phases = {(e.task_id, e.path): e.detail["phase"]
              for e in lease_events(site_runtime, inprocess_runs["training_pipeline"]["run_id"])}
    assert phases[("extract_features", "dev/connections/warehouse")] == "render"
    assert phases[("extract_features", "dev/variables/feature_store_token")] == "render"
    assert phases[("train_model", "dev/connections/warehouse")] == "execute"


def test_backend_kwargs_ttl_and_the_hooks_own_ttl(inprocess_runs, site_runtime: Runtime) -> None:
    ttl = {e.task_id: (e.detail["ttl_s"], e.detail.get("via"))
           for e in lease_events(site_runtime, inprocess_runs["training_pipeline"]["run_id"])}
    assert ttl["train_model"] == (900, None)  # [secrets] backend_kwargs {"ttl": 900}
    assert ttl["publish_model"] == (300, "hook")  # RunleaseHook().get_leased_connection(..., ttl=300)


def test_every_lease_is_revoked_when_its_task_ends(inprocess_runs, site_runtime: Runtime) -> None:
    run_id = inprocess_runs["training_pipeline"]["run_id"]
    leases = site_runtime.ledger.find_leases(run_id=run_id)
    assert len(leases) == 4
    assert {lease.state for lease in leases} == {LeaseState.REVOKED}
    revokes = [e for e in site_runtime.ledger.events(AuditQuery(run_id=run_id)) if e.action == "revoke"]
    assert {(e.principal, e.detail["reason"]) for e in revokes} == {(TASK_ACTOR, "task success")}


def test_a_retry_leases_each_try_and_revokes_both(inprocess_runs, site_runtime: Runtime) -> None:
    run = inprocess_runs["rl_retry"]
    assert run["state"] == "success" and run["task_tries"]["flaky"] == 2
    leases = sorted(site_runtime.ledger.find_leases(run_id=run["run_id"]), key=lambda lease: lease.identity.try_number)
    assert [(lease.identity.try_number, lease.state, lease.revoke_reason) for lease in leases] == [
        (1, LeaseState.REVOKED, "task up_for_retry"),
        (2, LeaseState.REVOKED, "task success"),
    ]


def test_a_task_that_skips_itself_has_its_lease_revoked(inprocess_runs, site_runtime: Runtime) -> None:
    run = inprocess_runs["rl_skip"]
    assert run["task_states"] == {"skip_after_lookup": "skipped"}
    (lease,) = site_runtime.ledger.find_leases(run_id=run["run_id"])
    assert (lease.state, lease.revoke_reason) == (LeaseState.REVOKED, "task skipped")


def test_mapped_instances_get_their_own_lease_reused_within_the_instance(
    inprocess_runs, site_runtime: Runtime
) -> None:
    run = inprocess_runs["rl_mapped"]
    assert run["state"] == "success"
    leases = site_runtime.ledger.find_leases(run_id=run["run_id"])
    # Two lookups per instance, one lease each: the second lookup was served from the lease cache.
    assert sorted(lease.identity.map_index for lease in leases) == [0, 1]
    assert {lease.state for lease in leases} == {LeaseState.REVOKED}


def test_a_dag_not_granted_the_connection_is_denied_and_does_not_fall_through(
    inprocess_runs, site_runtime: Runtime
) -> None:
    run = inprocess_runs["untrusted_reporting"]
    # The decoy AIRFLOW_CONN_WAREHOUSE in the next backend would have let the task succeed.
    assert run["task_states"] == {"read_warehouse": "failed"}
    events = list(site_runtime.ledger.events(AuditQuery(run_id=run["run_id"])))
    assert [(e.action, e.outcome.value, e.path, e.pipeline, e.task_id) for e in events] == [
        ("lease", "denied", "dev/connections/warehouse", "untrusted_reporting", "read_warehouse"),
    ]
    assert site_runtime.ledger.find_leases(run_id=run["run_id"]) == []
    output = inprocess_runs.stdout + inprocess_runs.stderr
    assert "RunleaseAccessDenied: airflow:untrusted_reporting:read_warehouse is not granted 'lease'" in output


def test_no_secret_value_in_the_runs_output(inprocess_runs, airflow_site) -> None:
    output = inprocess_runs.stdout + inprocess_runs.stderr
    assert "[DAG TEST] end task" in output  # the scan below looks at real output
    leaked = [needle for needle in airflow_site.secrets.needles() if needle in output]
    assert leaked == []
