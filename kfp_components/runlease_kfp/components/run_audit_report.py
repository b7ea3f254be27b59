"""``run_audit_report``: write the run's audit trail (never a value) as Markdown and HTML artifacts.

The KFP UI renders both artifact types inline. The artifacts' metadata
carries the counts (leases, revoked, still active, chain OK) so a run's
hygiene is visible without opening them. Rendering lives in
runlease_kfp.audit_report; this module only declares the component.
"""

# No `from __future__ import annotations` here: kfp reads the component's annotations
# as live types when the decorator runs (string annotations fail its type checks).

from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from runlease_kfp.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def run_audit_report(
    markdown: Output[Markdown],
    html: Output[HTML],
    runlease_run_id: str = "",
    runlease_pipeline: str = "",
    runlease_task: str = "",
) -> None:
    """Write this KFP run's runlease audit trail (no values) as Markdown and HTML."""
    from runlease.runtime import open_runtime
    from runlease_kfp.audit_report import RunAudit, write_report
    from runlease_kfp.run_identity import resolve_identity

    who = resolve_identity(inputs={
        "runlease_run_id": runlease_run_id,
        "runlease_pipeline": runlease_pipeline,
        "runlease_task": runlease_task,
    })
    rt = open_runtime()
    try:
        audit = RunAudit.collect(rt, who.run_id)
    finally:
        rt.close()
    write_report(audit, markdown.path, html.path)
    markdown.metadata.update(audit.metadata())
    html.metadata.update(audit.metadata())
