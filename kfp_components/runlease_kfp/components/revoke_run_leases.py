"""``revoke_run_leases``: the exit task of a runlease pipeline (see runlease_kfp.run_cleanup).

Use it as a ``dsl.ExitHandler``'s ``exit_task``; ``runlease_kfp.leased_run``
does that for you. It returns how many leases were still active (a public
count, no values). Its identity inputs are filled in by
``runlease_kfp.bind_run_identity``; the function body runs in the component
container and imports runlease_kfp there (KFP ships only this function's
source).
"""

# No `from __future__ import annotations` here: kfp reads the component's annotations
# as live types when the decorator runs (string annotations fail its type checks).

from kfp import dsl

from runlease_kfp.images import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def revoke_run_leases(runlease_run_id: str = "", runlease_pipeline: str = "", runlease_task: str = "") -> int:
    """Revoke every runlease lease of this KFP run that is still active; return the count."""
    from runlease_kfp.run_cleanup import revoke_leases_of_run

    return revoke_leases_of_run({
        "runlease_run_id": runlease_run_id,
        "runlease_pipeline": runlease_pipeline,
        "runlease_task": runlease_task,
    })
