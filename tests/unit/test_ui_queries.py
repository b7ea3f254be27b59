"""The data behind the Airflow UI pages (runlease_airflow.ui.queries), on a real local runtime."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.homes import make_runtime

from runlease.models import RunIdentity
from runlease.rotation.engine import RotationEngine
from runlease.rotation.policy import RotationPolicy
from runlease.runtime import Runtime
from runlease_airflow.ui import queries

RUN = "scheduled__2026-01-01T00:00:00+00:00"  # the same run id in two DAGs, as on a shared schedule
PASSWORD = "Ui-queries-pw-0123456789"  # runlease: allow secret-assignment, high-entropy-secret
ADMIN = RunIdentity(orchestrator="cli", pipeline="tests", principal="cli:tests")


def who(dag: str, task: str, try_number: int, map_index: int | None = None) -> RunIdentity:
    return RunIdentity(orchestrator="airflow", pipeline=dag, run_id=RUN, task_id=task, try_number=try_number,
                       map_index=map_index, principal=f"airflow:{dag}")


@pytest.fixture()
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(tmp_path / "home")
    runtime.broker.put("dev/connections/warehouse", {"conn_type": "postgres", "host": "db", "password": PASSWORD},
                       ADMIN)
    yield runtime
    runtime.close()


def test_run_view_groups_by_task_try_and_never_mixes_dags(rt: Runtime) -> None:
    broker = rt.broker
    first = broker.lease("dev/connections/warehouse", who("etl", "load", 1), 600)
    broker.lease("dev/connections/warehouse", who("etl", "load", 2), 600)
    broker.lease("dev/connections/warehouse", who("etl", "shard", 1, map_index=3), 600)
    broker.lease("dev/connections/warehouse", who("other_dag", "load", 1), 600)
    broker.revoke(first.lease_id, "task up_for_retry")

    view = queries.run_view(rt, "etl", RUN)
    assert [t.label for t in view.tries] == ["load try 1", "load try 2", "shard[3] try 1"]
    assert view.lease_count == 3 and view.count("revoked") == 1 and view.count("active") == 2
    assert view.tries[0].leases[0].revoke_reason == "task up_for_retry"
    assert {e.action for e in view.events} == {"lease", "revoke"}
    assert all(e.chained for e in view.events) and view.chain.ok
    assert {e.principal for e in view.events} == {"airflow:etl"}  # not the other DAG's run of the same id

    task = queries.run_view(rt, "etl", RUN, task_id="shard", map_index=3)
    assert [t.label for t in task.tries] == ["shard[3] try 1"] and len(task.events) == 1
    assert [r.dag_id for r in queries.recent_runs(rt)] in (["etl", "other_dag"], ["other_dag", "etl"])
    for row in task.events + view.events:
        assert PASSWORD not in repr(row)


def test_denials_and_a_broken_chain_are_shown(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "home" / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["cli"]\nenvironments = ["*"]\npaths = ["*"]\ncapabilities = ["admin"]\n')
    rt.close()
    from runlease.runtime import open_runtime
    from runlease.settings import Settings

    denied_rt = open_runtime(Settings(home=tmp_path / "home"))
    try:
        with pytest.raises(Exception):
            denied_rt.broker.lease("dev/connections/warehouse", who("etl", "load", 1), 600)
        view = queries.run_view(denied_rt, "etl", RUN)
        assert [(d.task, d.path, d.outcome) for d in view.denials] == [("load", "dev/connections/warehouse", "denied")]
        assert "capability=lease" in view.denials[0].detail
        seq = view.denials[0].seq
    finally:
        denied_rt.close()
    # Edit the denial in the database: the page marks it as outside the verified chain.
    db = sqlite3.connect(tmp_path / "home" / "store.db")
    db.execute("UPDATE audit SET path='dev/connections/other' WHERE seq=?", (seq,))
    db.commit()
    db.close()
    broken_rt = open_runtime(Settings(home=tmp_path / "home"))
    try:
        view = queries.run_view(broken_rt, "etl", RUN)
        assert not view.chain.ok and not view.events[0].chained
    finally:
        broken_rt.close()


def test_rotation_rows(rt: Runtime) -> None:
    broker = rt.broker
    broker.put("dev/tokens/fresh", "tok-fresh-0123456789", ADMIN, kind="tokens")
    broker.put("dev/tokens/stale", "tok-stale-0123456789", ADMIN, kind="tokens")
    rt.store.update_metadata(broker.path("dev/tokens/fresh", "tokens"),
                             RotationPolicy(rotator="token", interval_s=30 * 86400, grace_s=3600,
                                            owner="ml").to_metadata())
    rt.store.update_metadata(broker.path("dev/tokens/stale", "tokens"),
                             RotationPolicy(rotator="token", interval_s=1, grace_s=1, owner="de").to_metadata())
    RotationEngine(broker).rotate(broker.path("dev/tokens/fresh", "tokens"), ADMIN, None)
    import time

    time.sleep(1.3)
    rows = {r.path: r for r in queries.rotation_rows(rt)}
    assert set(rows) == {"dev/tokens/fresh", "dev/tokens/stale"}  # the connection has no policy
    fresh, stale = rows["dev/tokens/fresh"], rows["dev/tokens/stale"]
    assert fresh.state == "grace" and fresh.previous_in_grace.startswith("v1 until") and fresh.current_version == 2
    assert fresh.fraction is not None and fresh.fraction < 0.01 and fresh.owner == "ml"
    assert stale.state == "overdue" and stale.fraction is not None and stale.fraction > 1.25
    assert stale.last_result == "never rotated" and stale.due == "now"


def test_plugin_registration_does_not_load_the_web_stack() -> None:
    """Task processes import the plugin (for the listener); FastAPI and Jinja2 load on the first page request."""
    import subprocess
    import sys

    code = ("import sys, runlease_airflow.ui as ui\n"
            "assert [a['url_prefix'] for a in ui.FASTAPI_APPS] == ['/runlease']\n"
            "print(','.join(m for m in ('fastapi', 'jinja2', 'runlease_airflow.ui.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
