"""The ready components' python_func on a real embedded store: revoke_run_leases, run_audit_report."""

# No `from __future__ import annotations`: kfp reads component annotations as live types.

from pathlib import Path

import pytest
from kfp import dsl

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity
from runlease_kfp import revoke_run_leases, run_audit_report
from runlease_kfp.errors import RunIdentityError
from runlease_kfp.run_cleanup import EXIT_REASON

from kfp_unit_support import StockedHome


def who(run_id: str, task: str) -> RunIdentity:
    return RunIdentity(orchestrator="kfp", pipeline="training", run_id=run_id, task_id=task)


def identity_args(run_id: str, task: str) -> dict[str, str]:
    return {"runlease_run_id": run_id, "runlease_pipeline": "training", "runlease_task": task}


@pytest.fixture()
def run_with_leases(stocked_home: StockedHome) -> dict[str, str]:
    """Run r1: one lease its step already revoked, one left active (a killed step); run r2: one active."""
    rt = stocked_home.runtime()
    try:
        done = rt.broker.lease("dev/connections/warehouse", who("r1", "fetch-data"), 600)
        rt.broker.revoke(done.lease_id, "kfp component exited", who("r1", "fetch-data"))
        left = rt.broker.lease("dev/tokens/experiment_tracker", who("r1", "train-model"), 600, kind="tokens")
        other = rt.broker.lease("dev/connections/warehouse", who("r2", "fetch-data"), 600)
    finally:
        rt.close()
    return {"done": done.lease_id, "left": left.lease_id, "other": other.lease_id}


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


def test_run_audit_report_writes_markdown_and_html_without_values(stocked_home: StockedHome, tmp_path: Path,
                                                                  run_with_leases: dict[str, str]) -> None:
    markdown = dsl.Markdown(uri=str(tmp_path / "report" / "markdown"))
    html = dsl.HTML(uri=str(tmp_path / "report" / "html"))
    run_audit_report.python_func(markdown=markdown, html=html, **identity_args("r1", "run-audit-report"))
    md = Path(markdown.path).read_text()
    page = Path(html.path).read_text()
    assert md.startswith("# runlease audit trail of KFP run `r1`")
    assert "leases issued: 2, revoked: 1, expired: 0, denied: 0, still active: 1" in md
    assert f"still active: {run_with_leases['left']} (dev/tokens/experiment_tracker, task train-model)" in md
    assert "audit chain OK" in md and "reason=kfp component exited" in md
    for lease_id in (run_with_leases["done"], run_with_leases["left"]):
        assert lease_id in md and lease_id in page
    assert run_with_leases["other"] not in md  # another run's lease is not in this run's report
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert markdown.metadata == {"run_id": "r1", "events": 3, "leases": 2, "revoked": 1, "expired": 0,
                                 "denied": 0, "active_leases": 1, "audit_chain_ok": True}
    for value in stocked_home.leaked_values:
        assert value not in md and value not in page


def test_report_escapes_markup_from_names(stocked_home: StockedHome, tmp_path: Path) -> None:
    rt = stocked_home.runtime()
    try:
        rt.broker.lease("dev/connections/warehouse", who("r3", "<script>alert(1)</script>|x"), 60)
    finally:
        rt.close()
    markdown = dsl.Markdown(uri=str(tmp_path / "md"))
    html = dsl.HTML(uri=str(tmp_path / "html"))
    run_audit_report.python_func(markdown=markdown, html=html, **identity_args("r3", "run-audit-report"))
    assert "<script>" not in Path(html.path).read_text() and "&lt;script&gt;" in Path(html.path).read_text()
    md = Path(markdown.path).read_text()
    assert "<script>" not in md and "\\|x" in md
