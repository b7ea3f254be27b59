"""run_audit_report on python_func against a real embedded store: Markdown + HTML, no values."""

# No `from __future__ import annotations`: kfp reads component annotations as live types.

from pathlib import Path

from kfp import dsl

from runlease_kfp import run_audit_report

from kfp_unit_support import StockedHome, identity_args, who


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
