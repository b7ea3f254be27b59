"""DAG runs through the real executor path: API server + LocalExecutor, each task in a supervised process.

This is where masking, revocation inside the task process and log leaks are
tested: only here does each task write its log file (through the supervisor,
with Airflow's masking) and run the listener in its own process.
"""

from __future__ import annotations


import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState
from runlease.runtime import Runtime

from runlease_airflow.api_server import REVOKE_ACTOR as API_SERVER_ACTOR
from runlease_airflow.listener import RUN_ACTOR, TASK_ACTOR
from runlease_airflow.reconcile import SWEEP_ACTOR

pytestmark = pytest.mark.slow


def task_log(airflow_site, run: dict, task_id: str, attempt: int = 1) -> str:
    path = (airflow_site.airflow_home / "logs" / f"dag_id={run['dag_id']}" / f"run_id={run['run_id']}"
            / f"task_id={task_id}" / f"attempt={attempt}.log")
    return path.read_text()


def test_example_dag_succeeds_on_the_executor_path(executor_runs) -> None:
    run = executor_runs["training_pipeline"]
    assert run["state"] == "success"
    assert set(run["task_states"].values()) == {"success"}


def test_leases_are_revoked_by_the_listener_inside_each_task_process(
    executor_runs, airflow_site, site_runtime: Runtime
) -> None:
    run = executor_runs["training_pipeline"]
    leases = site_runtime.ledger.find_leases(run_id=run["run_id"])
    assert len(leases) == 4 and {lease.state for lease in leases} == {LeaseState.REVOKED}
    revokes = [e for e in site_runtime.ledger.events(AuditQuery(run_id=run["run_id"])) if e.action == "revoke"]
    # The API server (runlease is its backend here too) also revokes a try when it records the try's
    # end; it and the task's own listener race for success, and whichever comes first revokes.
    assert {e.principal for e in revokes} <= {TASK_ACTOR, API_SERVER_ACTOR}
    assert {e.detail.get("reason") for e in revokes} == {"task success"}
    # Where the listener did it, its own log line is in that task's log file: it ran in that process.
    expected = {"extract_features": 2, "train_model": 1, "publish_model": 1}
    for task_id, count in expected.items():
        by_listener = [e for e in revokes if e.task_id == task_id and e.principal == TASK_ACTOR]
        if len(by_listener) == count:
            assert f"runlease: revoked {count} lease(s) of training_pipeline.{task_id} try 1 (success)" in task_log(
                airflow_site, run, task_id)


def test_template_and_execute_phases_on_the_executor_path(executor_runs, site_runtime: Runtime) -> None:
    run = executor_runs["training_pipeline"]
    phases = {(e.task_id, e.detail["phase"]) for e in site_runtime.ledger.events(AuditQuery(run_id=run["run_id"]))
              if e.action == "lease"}
    assert phases == {("extract_features", "render"), ("train_model", "execute"), ("publish_model", "execute")}


def test_task_logs_mask_every_form_of_every_leased_value(executor_runs, airflow_site) -> None:
    run = executor_runs["rl_leaky"]
    assert run["task_states"] == {"print_everything": "success", "echo_template": "success",
                                  "raise_with_secret": "failed"}
    printed = task_log(airflow_site, run, "print_everything")
    assert "stdout password=*** uri=postgres://etl:***@warehouse.internal:5432/analytics" in printed
    assert "stderr password=***" in printed
    assert "logged api key=***" in printed
    echoed = task_log(airflow_site, run, "echo_template")
    assert "pw=*** tok=***" in echoed
    raised = task_log(airflow_site, run, "raise_with_secret")
    assert "could not connect with password ***" in raised


def test_no_leased_value_in_any_file_under_airflow_home_or_any_output(
    executor_runs, inprocess_runs, airflow_site
) -> None:
    needles = [n.encode() for n in airflow_site.secrets.needles()]
    files = [p for p in airflow_site.airflow_home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "airflow.db" for p in files)
    hits = [(str(p), n.decode()[:4]) for p in files for n in needles if n in p.read_bytes()]
    assert hits == []
    outputs = executor_runs.stdout + executor_runs.stderr + (airflow_site.root / "api-server.log").read_text()
    assert "stdout password=***" in outputs  # the LocalExecutor echoes task output here: masked
    assert [n.decode()[:4] for n in needles if n.decode() in outputs] == []


def test_retry_on_the_executor_path(executor_runs, airflow_site, site_runtime: Runtime) -> None:
    run = executor_runs["rl_retry"]
    assert run["state"] == "success" and run["task_tries"]["flaky"] == 2
    leases = sorted(site_runtime.ledger.find_leases(run_id=run["run_id"]), key=lambda lease: lease.identity.try_number)
    assert [(lease.identity.try_number, lease.state, lease.revoke_reason) for lease in leases] == [
        (1, LeaseState.REVOKED, "task up_for_retry"),
        (2, LeaseState.REVOKED, "task success"),
    ]
    assert "first try fails on purpose" in task_log(airflow_site, run, "flaky", attempt=1)
    # Try 2's leases were revoked by its own listener (whose line is then in its log) or by the
    # API server recording its success, whichever came first.
    revoke = [e for e in site_runtime.ledger.events(AuditQuery(run_id=run["run_id"]))
              if e.action == "revoke" and e.try_number == 2]
    assert len(revoke) == 1 and revoke[0].principal in {TASK_ACTOR, API_SERVER_ACTOR}
    if revoke[0].principal == TASK_ACTOR:
        assert "(success)" in task_log(airflow_site, run, "flaky", attempt=2)


def test_dag_file_parse_in_the_worker_is_an_audited_read_bound_to_the_dag(
    executor_runs, site_runtime: Runtime
) -> None:
    assert executor_runs["rl_parse_time"]["state"] == "success"
    parse_reads = [e for e in site_runtime.ledger.events(AuditQuery(path="dev/variables/api_token"))
                   if e.detail.get("phase") == "parse"]
    assert parse_reads, "the task process parsed the DAG file without a parse-time read"
    assert {(e.action, e.pipeline, e.task_id, e.run_id) for e in parse_reads} == {
        ("read", "rl_parse_time", "uses_parse_time_value", None)}


def test_a_killed_task_is_cleaned_up_outside_its_process(
    executor_runs, airflow_site, site_runtime: Runtime
) -> None:
    run = executor_runs["rl_killed"]
    assert run["state"] == "failed"
    (lease,) = site_runtime.ledger.find_leases(run_id=run["run_id"])
    assert lease.state is LeaseState.REVOKED
    revoke = [e for e in site_runtime.ledger.events(AuditQuery(run_id=run["run_id"])) if e.action == "revoke"]
    # SIGKILL skipped the task's own listener; the supervisor still reported the failure to the API
    # server (which revokes), and the scheduler-side hooks (task failed / run failed) and the API
    # server's sweep are the backstops.
    assert len(revoke) == 1 and revoke[0].principal in {TASK_ACTOR, RUN_ACTOR, API_SERVER_ACTOR, SWEEP_ACTOR}
    assert "runlease: revoked" not in task_log(airflow_site, run, "killed_mid_task")
