"""The rotation DAG run for real with ``dag.test()``: three secrets due, one of them broken.

Run 1 rotates a ``token`` secret and a ``postgres`` secret (real logins on
the test server) and fails the third -- a postgres secret whose admin
connection points at a closed port -- through Airflow's failure path,
without stopping the other two. Run 2 retires the two finished rotations
(grace 0) and resumes the broken one, which fails again.

To make the secrets due, their policies start with a one-second interval
(and the test waits that second); before run 2 the two healthy ones get a
30-day interval back, so run 2 only retires them.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import socket
import time

import psycopg
import pytest
from psycopg import sql

from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.rotation.policy import RotationPolicy
from runlease.rotation.state import Status
from runlease.runtime import Runtime
from support.postgres import PostgresServer

from conftest import REPO, AirflowSite, leak_forms, run_dags

pytestmark = pytest.mark.slow

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests", principal="cli:tests")
TOKEN = SecretPath.parse("dev/tokens/rot_api_key")
DB = SecretPath.parse("dev/connections/rot_db")
BROKEN = SecretPath.parse("dev/connections/rot_broken_db")
PG_ADMIN = SecretPath.parse("dev/connections/rot_pg_admin")
DEAD_ADMIN = SecretPath.parse("dev/connections/rot_dead_admin")


def policy(rotator: str, interval_s: int = 1, **settings: object) -> dict:
    return RotationPolicy(rotator=rotator, interval_s=interval_s, grace_s=0, owner="ml-platform",
                          settings=settings).to_metadata()


def login(conn: dict) -> bool:
    try:
        with psycopg.connect(host=conn["host"], port=str(conn["port"]), dbname=conn["schema"], user=conn["login"],
                             password=conn["password"], connect_timeout=10):
            return True
    except psycopg.OperationalError:
        return False


def stock(rt: Runtime, server: PostgresServer, dbname: str, closed_port: int) -> dict:
    """Three secrets with rotation policies; returns their first values (to check old ones die)."""
    tag = secrets.token_hex(3)
    role, parent, admin, admin_pw, pw = f"dagapp_{tag}", f"dagapp_rw_{tag}", f"dagadmin_{tag}", \
        secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    server.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(admin), sql.Literal(admin_pw)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(parent)),
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(parent), sql.Identifier(admin)),
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(role), sql.Literal(pw), sql.Identifier(parent)),
    )
    base = {"conn_type": "postgres", "host": server.host, "port": server.port, "schema": dbname,
            "extra": {"sslmode": "disable"}}
    b = rt.broker
    b.put(PG_ADMIN, {**base, "login": admin, "password": admin_pw}, ADMIN)
    b.put(DEAD_ADMIN, {**base, "port": closed_port, "login": admin, "password": admin_pw}, ADMIN)
    b.put(DB, {**base, "login": role, "password": pw}, ADMIN)
    b.put(BROKEN, {**base, "login": role, "password": pw}, ADMIN)
    b.put(TOKEN, "rk_" + secrets.token_urlsafe(32), ADMIN, kind="tokens")
    rt.store.update_metadata(TOKEN, policy("token", prefix="rk_"))
    rt.store.update_metadata(DB, policy("postgres", admin=str(PG_ADMIN), parent_role=parent))
    rt.store.update_metadata(BROKEN, policy("postgres", admin=str(DEAD_ADMIN), parent_role=parent))
    return {"token": rt.store.get(TOKEN).value, "db": rt.store.get(DB).value, "role": role}


@pytest.fixture(scope="module")
def rotation_runs(airflow_site: AirflowSite, postgres_server: PostgresServer, tmp_path_factory) -> dict:
    dbname = postgres_server.create_database("dagrot")
    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    rt = airflow_site.runtime()
    try:
        first = stock(rt, postgres_server, dbname, closed)
    finally:
        rt.close()
    time.sleep(1.1)  # the one-second interval has passed: all three are due
    run1 = run_dags(airflow_site, ["rl_rotation"], executor=False)
    rt = airflow_site.runtime()
    try:
        after_run1 = {
            "db_stages": rt.store.info(DB).stages, "db_new_logs_in": login(rt.store.get(DB).value),
            "db_old_logs_in": login(first["db"]), "old_token_ok": rt.broker.verify_presented_key(TOKEN, first["token"], ADMIN),
            "broken_state": rt.store.resolve(BROKEN).metadata["rotation_state"],
            "broken_logs_in": login(rt.store.get(BROKEN).value),
        }
        for path in (TOKEN, DB):
            settings = rt.store.resolve(path).metadata["rotation"]
            rt.store.update_metadata(path, {"rotation": {**settings, "interval_s": 30 * 86400}})
    finally:
        rt.close()
    run2 = run_dags(airflow_site, ["rl_rotation"], executor=False)
    results = [run1["rl_rotation"], run2["rl_rotation"]]
    failures = airflow_site.root / "rotation-failures.jsonl"
    recorded = [json.loads(line) for line in failures.read_text().splitlines()] if failures.exists() else []
    output = run1.stdout + run1.stderr + run2.stdout + run2.stderr
    return {"runs": results, "first": first, "output": output, "failures": recorded, "after_run1": after_run1}


def by_secret(result: dict, order: list[SecretPath]) -> dict[str, dict[str, str]]:
    """Task states of the mapped ``rotate`` group per secret (map indexes follow find_due's sorted list)."""
    out: dict[str, dict[str, str]] = {}
    for key, state in result["task_states"].items():
        if key.startswith("rotate.") and "[" in key:
            name, index = key[len("rotate."):].rstrip("]").split("[")
            out.setdefault(str(order[int(index)]), {})[name] = state
    return out


def test_one_broken_secret_fails_alone_and_the_others_rotate(rotation_runs: dict, site_runtime: Runtime) -> None:
    run1 = rotation_runs["runs"][0]
    assert run1["state"] == "failed"
    groups = by_secret(run1, [BROKEN, DB, TOKEN])
    assert groups[str(DB)] == groups[str(TOKEN)] == {"create": "success", "set": "success", "test": "success",
                                                     "finish": "success"}
    assert groups[str(BROKEN)] == {"create": "success", "set": "failed", "test": "upstream_failed",
                                   "finish": "upstream_failed"}
    assert run1["task_tries"]["rotate.set[0]"] == 2  # set retries (a target can be briefly away)
    after = rotation_runs["after_run1"]
    assert after["db_stages"] == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert after["db_new_logs_in"] and after["db_old_logs_in"]  # grace: both work
    assert after["old_token_ok"]
    broken = after["broken_state"]
    assert (broken["status"], broken["step"]) == ("rotating", "create")  # left to resume, CURRENT untouched
    assert after["broken_logs_in"]


def test_failures_take_airflows_failure_path(rotation_runs: dict) -> None:
    failed = {(f["task_id"], f["secret"]) for f in rotation_runs["failures"]}
    assert failed == {("rotate.set", str(BROKEN))}
    assert len({f["run_id"] for f in rotation_runs["failures"]}) == 2  # and again in the second run


def test_the_next_run_retires_and_resumes(rotation_runs: dict, site_runtime: Runtime) -> None:
    run1, run2 = rotation_runs["runs"]
    assert {k: v for k, v in run2["task_states"].items() if k.startswith("retire")} == {
        "retire[0]": "success", "retire[1]": "success"}
    assert by_secret(run2, [BROKEN])[str(BROKEN)]["set"] == "failed"  # only the broken one is due again
    first = rotation_runs["first"]
    store = site_runtime.store
    assert store.info(DB).stages == {Stage.CURRENT: 2} and login(store.get(DB).value)
    assert not login(first["db"])  # retire disabled the old role
    assert not site_runtime.broker.verify_presented_key(TOKEN, first["token"], ADMIN)
    for path in (DB, TOKEN):
        assert store.resolve(path).metadata["rotation_state"]["status"] == Status.DONE.value
    tokens = {store.resolve(BROKEN).metadata["rotation_state"]["token"]}
    resumed = [e for e in site_runtime.ledger.events(AuditQuery(action="rotate", path=str(BROKEN)))
               if e.run_id == run2["run_id"]]
    assert resumed and {e.detail["token"] for e in resumed} == tokens  # resumed under its own token


def test_every_step_is_audited_with_the_task_that_ran_it(rotation_runs: dict, site_runtime: Runtime) -> None:
    run1 = rotation_runs["runs"][0]
    events = [e for e in site_runtime.ledger.events(AuditQuery(action="rotate", path=str(DB)))
              if e.run_id == run1["run_id"]]
    assert [(e.detail["step"], e.task_id, e.pipeline) for e in events] == [
        ("start", "rotate.create", "rl_rotation"), ("create", "rotate.create", "rl_rotation"),
        ("set", "rotate.set", "rl_rotation"), ("test", "rotate.test", "rl_rotation"),
        ("finish", "rotate.finish", "rl_rotation")]
    assert {e.map_index for e in events} == {1}


def test_no_value_in_the_runs_output(rotation_runs: dict, site_runtime: Runtime) -> None:
    output = rotation_runs["output"]
    assert "[DAG TEST] end task" in output  # the scan below looks at real output
    values: list[str] = []
    for path in (DB, TOKEN, BROKEN, PG_ADMIN):
        for version in site_runtime.store.history(path):
            value = site_runtime.store.get(path, version=version.version).value
            values.append(value if isinstance(value, str) else value["password"])
    assert [form for v in values for form in leak_forms(v) if form in output] == []


def test_the_example_dag_is_hourly_with_retries_on_set_and_test() -> None:
    spec = importlib.util.spec_from_file_location("rl_example_rotation_dag", REPO / "dags_examples" / "rotation_dag.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert dag.dag_id == "runlease_rotation" and dag.max_active_runs == 1
    assert dag.schedule == "@hourly"
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"find_retirable", "retire", "find_due", "rotate.create", "rotate.set", "rotate.test",
                          "rotate.finish"}
    assert (tasks["rotate.set"].retries, tasks["rotate.test"].retries, tasks["rotate.finish"].retries) == (3, 3, 0)
    assert tasks["find_due"].trigger_rule == "all_done"
    # Each step waits for the one before (and for find_due, which feeds the mapped group its secrets).
    assert tasks["rotate.set"].upstream_task_ids == {"rotate.create", "find_due"}
    assert tasks["rotate.finish"].upstream_task_ids == {"rotate.test", "find_due"}
    assert tasks["rotate.create"].on_failure_callback
