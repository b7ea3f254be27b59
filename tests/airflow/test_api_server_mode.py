"""API-server mode on the real executor path: runlease only in ``airflow api-server``, workers hold nothing.

Set-up (module fixtures): the API server runs with ``[secrets] backend =
RunleaseBackend`` over its own runlease home, whose policy grants each of two
DAGs its own connection with ``require_verified = true``. The worker side --
the process running ``dag.test(use_executor=True)`` with LocalExecutor, hence
every supervisor and task process -- runs in a separate mount namespace
(``unshare -m``) where that home is hidden by an empty tmpfs, with no
``[secrets]`` setting and no ``RUNLEASE_*`` variable. Tasks reach their
connections and variables only through the Execution API.

Two DAG runs carry every check (see ``dags/runlease_api_mode_dags.py``): the
tasks print what each attack got as ``ATTACK <name> <outcome>`` lines; the
tests read those from the task logs, and the ledger from the API server's home.

What LocalExecutor cannot show: its tasks inherit the scheduler's environment,
which holds Airflow's JWT signing secret and the metadata DB URL. A real
deployment keeps those off the workers (Celery/Kubernetes executors); see
docs/airflow-deployment.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ADMIN, BIN, RUNNER, AirflowSite, _stop_group, _wait_for_health, free_port, leak_forms

from runlease.ledger.base import AuditQuery
from runlease.models import IDENTITY_FIELDS, LeaseState, RunIdentity, Verification
from runlease.runtime import Runtime, init_home, open_runtime
from runlease.settings import Settings

from runlease_airflow.api_server import REVOKE_ACTOR
from runlease_airflow.reconcile import SWEEP_ACTOR
from runlease_airflow.ti_identity import METHOD, PHASE_ENDED

pytestmark = pytest.mark.slow

API_POLICY = """\
[[grant]]
description  = "the test harness administers everything"
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
description      = "tenant A's DAG, proven by its Execution API token, uses its own connection and variables"
principals       = ["airflow:rl_api_a"]
require_verified = true
environments     = ["dev"]
paths            = ["connections/tenant_a_db", "variables/tenant_a_*"]
capabilities     = ["lease", "read"]

[[grant]]
description      = "tenant B's DAG, proven the same way, uses its own"
principals       = ["airflow:rl_api_b"]
require_verified = true
environments     = ["dev"]
paths            = ["connections/tenant_b_db", "variables/tenant_b_*"]
capabilities     = ["lease", "read"]
"""

DAGS = ["rl_api_a", "rl_api_b"]


@dataclass
class TenantValues:
    a_password: str
    a_api_key: str
    a_note: str
    a_token: str
    b_password: str
    b_note: str

    @classmethod
    def random(cls) -> "TenantValues":
        return cls(a_password="Ta/" + secrets.token_urlsafe(12) + "@pw", a_api_key="ak" + secrets.token_hex(10),
                   a_note="note" + secrets.token_hex(10), a_token="tok" + secrets.token_hex(10),
                   b_password="Tb" + secrets.token_hex(10), b_note="bn" + secrets.token_hex(10))

    def needles(self) -> list[str]:
        return [form for value in vars(self).values() for form in leak_forms(value)]


@dataclass
class ApiMode:
    site: AirflowSite
    home: Path
    port: int
    values: TenantValues
    log_file: Path
    env: dict[str, str]

    def runtime(self) -> Runtime:
        return open_runtime(Settings(home=self.home))


def stock_tenants(home: Path, values: TenantValues) -> None:
    runtime, _ = init_home(Settings(home=home))
    try:
        broker = runtime.broker
        broker.put("dev/connections/tenant_a_db", {
            "conn_type": "postgres", "host": "a.internal", "login": "etl", "password": values.a_password,
            "schema": "analytics", "port": 5432, "extra": {"sslmode": "require", "api_key": values.a_api_key},
        }, ADMIN)
        broker.put("dev/connections/tenant_b_db", {
            "conn_type": "postgres", "host": "b.internal", "login": "etl", "password": values.b_password,
        }, ADMIN)
        # A key Airflow does not consider sensitive ("note"): masking must not depend on the name.
        broker.put("dev/variables/tenant_a_note", values.a_note, ADMIN, kind="variables")
        broker.put("dev/variables/tenant_a_token", values.a_token, ADMIN, kind="variables")
        broker.put("dev/variables/tenant_b_note", values.b_note, ADMIN, kind="variables")
    finally:
        runtime.close()
    (home / "policy.toml").write_text(API_POLICY)


@pytest.fixture(scope="module")
def api_mode(airflow_site: AirflowSite) -> Iterator[ApiMode]:
    """``airflow api-server`` with runlease as its ``[secrets] backend`` (the only place it is configured)."""
    home = airflow_site.root / "runlease-api"
    values = TenantValues.random()
    stock_tenants(home, values)
    port = free_port()
    env = {k: v for k, v in airflow_site.env.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update({
        "AIRFLOW__SECRETS__BACKEND_KWARG__HOME": str(home),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # A decoy for B's connection next in the API server's chain: a denial that fell
        # through would hand it out instead of answering 403.
        "AIRFLOW_CONN_TENANT_B_DB": "postgres://decoy:decoy-password@decoy.invalid:5432/decoy",
        # Not in runlease at all: the API server's chain must fall through to it.
        "AIRFLOW_CONN_TENANT_SHARED": "postgres://shared@shared.internal:5432/shared",
    })
    log_file = airflow_site.root / "api-server-apimode.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=airflow_site.root,
        )
    try:
        _wait_for_health(port, proc, log_file, deadline_s=180)
        yield ApiMode(airflow_site, home, port, values, log_file, env)
    finally:
        _stop_group(proc)


def worker_env(mode: ApiMode) -> dict[str, str]:
    """The worker side: no secrets backend setting, no RUNLEASE_*, no connection env vars."""
    env = {k: v for k, v in mode.site.env.items()
           if not k.startswith(("AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__", "RUNLEASE_", "AIRFLOW_CONN_"))}
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{mode.port}/execution/"
    env["RL_TEST_API_HOME"] = str(mode.home)
    env["PYTHONFAULTHANDLER"] = "1"
    return env


@dataclass
class Runs:
    results: dict[str, dict]
    output: str


@pytest.fixture(scope="module")
def api_runs(api_mode: ApiMode) -> Runs:
    """Both DAGs on the executor path, in a mount namespace where the API server's home is an empty tmpfs."""
    hide_home = 'mount -t tmpfs -o size=1m,mode=0755 none "$RL_TEST_API_HOME" && exec "$@"'
    cmd = ["unshare", "-m", "sh", "-c", hide_home, "sh", sys.executable, str(RUNNER), *DAGS, "--executor"]
    out_file = api_mode.site.root / "worker-output.log"  # inspect with RUNLEASE_TEST_KEEP_SITE=1
    with out_file.open("wb") as out:
        proc = subprocess.Popen(cmd, env=worker_env(api_mode), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=api_mode.site.root)
        try:
            proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            # PYTHONFAULTHANDLER: SIGABRT makes every Python process of the group dump its stacks here.
            os.killpg(proc.pid, signal.SIGABRT)
            time.sleep(2)
            _stop_group(proc)  # the runner and its LocalExecutor workers: one process group, ours
            raise AssertionError(f"worker side timed out: {out_file.read_text()[-6000:]}") from None
    output = out_file.read_text()
    assert proc.returncode == 0, output[-3000:]
    results = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["dag_id"]] = result
    assert set(results) == set(DAGS), output[-3000:]
    return Runs(results, output)


@pytest.fixture()
def ledger(api_mode: ApiMode) -> Iterator[Runtime]:
    runtime = api_mode.runtime()
    yield runtime
    runtime.close()


def task_log(mode: ApiMode, run: dict, task_id: str, attempt: int = 1) -> str:
    path = (mode.site.airflow_home / "logs" / f"dag_id={run['dag_id']}" / f"run_id={run['run_id']}"
            / f"task_id={task_id}" / f"attempt={attempt}.log")
    return path.read_text()


def attacks(log: str) -> dict[str, str]:
    return dict(re.findall(r"ATTACK ([\w-]+) ([\w-]+)", log))


def ti_ids(mode: ApiMode, run: dict) -> dict[tuple[str, int], str]:
    """(task_id, try_number) -> task instance id, from Airflow's metadata DB (live rows and history)."""
    db = sqlite3.connect(mode.site.airflow_home / "airflow.db")
    try:
        rows = []
        for table, id_column in (("task_instance", "id"), ("task_instance_history", "task_instance_id")):
            rows += db.execute(f"SELECT task_id, try_number, {id_column} FROM {table} "
                               "WHERE dag_id = ? AND run_id = ?", (run["dag_id"], run["run_id"])).fetchall()
    finally:
        db.close()
    return {(task_id, int(try_number)): str(ti_id).replace("-", "") for task_id, try_number, ti_id in rows}


def test_the_runs_end_as_designed(api_runs: Runs) -> None:
    a, b = api_runs.results["rl_api_a"], api_runs.results["rl_api_b"]
    assert a["task_states"] == {"use_granted": "success", "forge_context": "success",
                                "echo_template": "success", "flaky": "success"}
    assert a["task_tries"]["flaky"] == 2
    assert b["state"] == "failed"
    assert b["task_states"] == {"use_granted_then_fail": "failed", "skip_after_lookup": "skipped"}


def test_granted_values_reach_the_task_masked_in_its_log(api_runs: Runs, api_mode: ApiMode) -> None:
    run = api_runs.results["rl_api_a"]
    printed = task_log(api_mode, run, "use_granted")
    assert "stdout password=*** uri=postgres://etl:***@a.internal:5432/analytics" in printed
    assert "extra api key=*** extra=***" in printed
    assert "note=*** token=***" in printed
    assert "stderr password=***" in printed
    echoed = task_log(api_mode, run, "echo_template")
    assert "dsn=postgres://etl:***@a.internal:5432/analytics" in echoed and "pw=*** note=***" in echoed
    assert "b password=***" in task_log(api_mode, api_runs.results["rl_api_b"], "use_granted_then_fail")
    assert "callback password=***" in echoed


def test_every_lease_is_audited_with_the_verified_task_instance(api_runs: Runs, api_mode: ApiMode,
                                                                ledger: Runtime) -> None:
    for dag_id in DAGS:
        run = api_runs.results[dag_id]
        ids = ti_ids(api_mode, run)
        leases = ledger.ledger.find_leases(run_id=run["run_id"], pipeline=dag_id)
        events = {e.lease_id: e for e in ledger.ledger.events(AuditQuery(run_id=run["run_id"]))
                  if e.action == "lease" and e.outcome.value == "ok"}
        assert leases and set(events) == {lease.lease_id for lease in leases}
        for event in events.values():
            assert event.pipeline == dag_id
            verified = event.detail["verified"]
            assert verified["method"] == METHOD
            assert set(verified["fields"]) >= {"pipeline", "run_id", "task_id", "try_number", "map_index"}
            # The proof names the very task instance (this try) that Airflow's metadata DB has.
            assert verified["subject"].replace("-", "") == ids[(event.task_id, event.try_number)]


def test_what_each_task_leased(api_runs: Runs, ledger: Runtime) -> None:
    run = api_runs.results["rl_api_a"]
    leased = sorted((lease.identity.task_id, lease.identity.try_number, lease.path.name)
                    for lease in ledger.ledger.find_leases(run_id=run["run_id"], pipeline="rl_api_a"))
    assert leased == [
        ("echo_template", 1, "tenant_a_db"), ("echo_template", 1, "tenant_a_note"),
        ("flaky", 1, "tenant_a_db"), ("flaky", 2, "tenant_a_db"),
        ("use_granted", 1, "tenant_a_db"), ("use_granted", 1, "tenant_a_note"), ("use_granted", 1, "tenant_a_token"),
    ]


def test_leases_are_revoked_in_the_api_server_when_each_try_ends(api_runs: Runs, ledger: Runtime) -> None:
    reasons = {}
    for dag_id in DAGS:
        run = api_runs.results[dag_id]
        for lease in ledger.ledger.find_leases(run_id=run["run_id"], pipeline=dag_id):
            assert lease.state is LeaseState.REVOKED, lease
            reasons[(dag_id, lease.identity.task_id, lease.identity.try_number)] = lease.revoke_reason
        revokes = [e for e in ledger.ledger.events(AuditQuery(run_id=run["run_id"])) if e.action == "revoke"]
        assert revokes and {e.principal for e in revokes} == {REVOKE_ACTOR}
    assert reasons == {
        ("rl_api_a", "use_granted", 1): "task success", ("rl_api_a", "echo_template", 1): "task success",
        ("rl_api_a", "flaky", 1): "task up_for_retry", ("rl_api_a", "flaky", 2): "task success",
        ("rl_api_b", "use_granted_then_fail", 1): "task failed",
        ("rl_api_b", "skip_after_lookup", 1): "task skipped",
    }


def test_a_callback_after_the_try_ended_gets_a_read_not_a_new_lease(api_runs: Runs, ledger: Runtime) -> None:
    run = api_runs.results["rl_api_a"]
    events = [e for e in ledger.ledger.events(AuditQuery(run_id=run["run_id"])) if e.task_id == "echo_template"]
    after = [e for e in events if e.detail.get("phase") == PHASE_ENDED]
    assert [(e.action, e.outcome.value, e.path) for e in after] == [("read", "ok", "dev/connections/tenant_a_db")]
    assert after[0].detail["verified"]["claims"]["ti_state"] == "success"
    # Its leases had been revoked when the success was recorded, before the callback asked.
    revoked_at = max(e.seq for e in events if e.action == "revoke")
    assert revoked_at < after[0].seq


def test_the_other_dags_secrets_are_denied_in_the_task_and_audited(api_runs: Runs, api_mode: ApiMode,
                                                                   ledger: Runtime) -> None:
    a, b = api_runs.results["rl_api_a"], api_runs.results["rl_api_b"]
    got_a = attacks(task_log(api_mode, a, "use_granted"))
    assert got_a["other-dag-connection"] == "AirflowSecretsBackendAccessDenied"
    assert got_a["other-dag-variable"] == "AirflowSecretsBackendAccessDenied"
    assert attacks(task_log(api_mode, b, "use_granted_then_fail"))["other-dag-connection"] == (
        "AirflowSecretsBackendAccessDenied")
    denied = [e for e in ledger.ledger.events(AuditQuery()) if e.outcome.value == "denied"]
    seen = {(e.pipeline, e.task_id, e.path) for e in denied}
    assert seen == {("rl_api_a", "use_granted", "dev/connections/tenant_b_db"),
                    ("rl_api_a", "use_granted", "dev/variables/tenant_b_note"),
                    ("rl_api_b", "use_granted_then_fail", "dev/connections/tenant_a_db")}
    assert all(e.detail["verified"]["method"] == METHOD for e in denied)
    # The denial is Airflow's 403, not a 500 the client would retry, and not the decoy behind it.
    log = api_mode.log_file.read_text()
    assert re.search(r"method=GET path=/execution/connections/tenant_b_db query= status_code=403", log), log[-2000:]
    assert "decoy-password" not in api_runs.output + task_log(api_mode, a, "use_granted")


def test_what_runlease_does_not_hold_falls_through_to_the_next_backend(api_runs: Runs, api_mode: ApiMode) -> None:
    got = attacks(task_log(api_mode, api_runs.results["rl_api_a"], "use_granted"))
    assert got["not-held-by-runlease"] == "got-value"  # from the API server's env backend, after runlease
    assert got["held-nowhere"] == "AirflowNotFoundException"  # a 404, not a denial


def test_a_worker_has_nothing_to_attack_with(api_runs: Runs, api_mode: ApiMode, ledger: Runtime) -> None:
    got = attacks(task_log(api_mode, api_runs.results["rl_api_a"], "use_granted"))
    assert got["key-in-env"] == "nothing"
    assert got["home-listing"] == "nothing"
    assert got["key-file"] == "FileNotFoundError"
    assert got["open-broker"] not in {"nothing", "got-value"}
    forged = attacks(task_log(api_mode, api_runs.results["rl_api_a"], "forge_context"))
    assert set(forged) == {"forged-ctx-stock-lookup", "forged-ctx-own-backend"}
    assert "got-value" not in forged.values() and "nothing" not in forged.values(), forged
    # Nothing was ever issued to, or audited for, the forged identity.
    assert ledger.ledger.find_leases(run_id="forged") == []
    assert [e for e in ledger.ledger.events(AuditQuery()) if e.run_id == "forged"] == []


def test_no_value_in_any_file_or_output(api_runs: Runs, api_mode: ApiMode) -> None:
    needles = [n.encode() for n in api_mode.values.needles()]
    files = [p for p in api_mode.site.airflow_home.rglob("*") if p.is_file()]
    hits = [(str(p), n.decode()[:4]) for p in files for n in needles if n in p.read_bytes()]
    assert hits == []
    outputs = api_runs.output + api_mode.log_file.read_text()
    assert [n.decode()[:4] for n in needles if n.decode() in outputs] == []


def test_requests_without_a_task_token_get_no_secret(api_mode: ApiMode) -> None:
    """Airflow's own check, in front of runlease: no token, or a token Airflow did not sign, is refused."""
    url = f"http://127.0.0.1:{api_mode.port}/execution/connections/tenant_a_db"
    for headers in ({}, {"Authorization": "Bearer " + "e30." * 2 + "c2ln"}):
        request = urllib.request.Request(url, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code in (401, 403)


def verified(dag_id: str, run_id: str, task_id: str, try_number: int) -> RunIdentity:
    """What the API server builds for a task instance (here for leases it never saw end)."""
    return RunIdentity(orchestrator="airflow", pipeline=dag_id, run_id=run_id, task_id=task_id,
                       try_number=try_number, verification=Verification(
                           method=METHOD, subject="00000000-0000-0000-0000-000000000000", fields=IDENTITY_FIELDS))


def test_the_api_server_sweep_revokes_what_ended_behind_its_back(api_runs: Runs, api_mode: ApiMode,
                                                                ledger: Runtime) -> None:
    """Run end and a try the scheduler failed directly in the DB never reach the state route."""
    a = api_runs.results["rl_api_a"]
    # Still active although its run finished: as if its worker died with its supervisor.
    after_run = ledger.broker.lease("dev/connections/tenant_a_db", verified("rl_api_a", a["run_id"], "flaky", 2), 900)
    # A run that exists but has not finished (triggered; no scheduler here runs it): its lease stays.
    trigger = subprocess.run([str(BIN / "airflow"), "dags", "trigger", "rl_api_b", "--run-id", "sweep_probe"],
                             env=api_mode.env, capture_output=True, text=True, timeout=180)
    assert trigger.returncode == 0, trigger.stderr[-2000:]
    open_run = ledger.broker.lease("dev/connections/tenant_b_db",
                                   verified("rl_api_b", "sweep_probe", "use_granted_then_fail", 1), 900)
    # One pass of the sweep the API server runs every minute, in a process configured like it.
    swept = subprocess.run(
        [sys.executable, "-c", "from runlease_airflow.reconcile import sweep_server_backends as s; print(s())"],
        env=api_mode.env, capture_output=True, text=True, timeout=180)
    assert swept.returncode == 0, swept.stderr[-2000:]
    closed = ledger.ledger.get_lease(after_run.lease_id)
    assert (closed.state, closed.revoke_reason) == (LeaseState.REVOKED, "dag run success")
    assert ledger.ledger.get_lease(open_run.lease_id).state is LeaseState.ACTIVE
    (revoke,) = [e for e in ledger.ledger.events(AuditQuery(run_id=a["run_id"]))
                 if e.action == "revoke" and e.lease_id == after_run.lease_id]
    assert revoke.principal == SWEEP_ACTOR
