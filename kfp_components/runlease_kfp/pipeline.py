"""``with runlease_kfp.leased_run():`` -- wrap a pipeline body so the whole run is lease-safe.

Inside a ``@dsl.pipeline`` function::

    @dsl.pipeline(name="training")
    def training(environment: str = "dev"):
        with runlease_kfp.leased_run(store=StoreAccess(secret_name="runlease-store")):
            data = fetch_data(environment=environment)
            train_model(dataset=data.outputs["dataset"])

This

* puts the body in a ``dsl.ExitHandler`` whose exit task is
  ``revoke_run_leases``: it runs after the body, also when a step failed or
  was killed, and revokes whatever the run still holds;
* adds ``run_audit_report`` after the body's top-level tasks (with
  ``ignore_upstream_failure()``, so on a cluster it also reports a failed
  run; kfp.local skips it then, as it skips the exit task);
* wires the run identity onto every task that can lease
  (:func:`runlease_kfp.bind_run_identity`) and wires the store's access on
  those tasks only (:class:`runlease_kfp.StoreAccess`: the ``runlease serve``
  URL and a projected token in server mode, a Kubernetes Secret otherwise),
  after the body has created them.

The exit and report tasks have caching disabled: a cached exit task would
revoke nothing in every later run.

Use it once, in the outermost pipeline: the exit task revokes *every* lease
of the run id, and a nested pipeline shares its parent's run id. Tasks of a
nested ``@dsl.pipeline`` are compiled when it is defined, so wire them there
with :func:`runlease_kfp.bind_run_identity` and ``StoreAccess.apply``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kfp import dsl
from kfp.dsl import pipeline_context
from kfp.dsl import utils as dsl_utils

from runlease_kfp.components.revoke_run_leases import revoke_run_leases
from runlease_kfp.components.run_audit_report import run_audit_report
from runlease_kfp.store_access import StoreAccess
from runlease_kfp.task_wiring import bind_run_identity, can_lease

EXIT_HANDLER_NAME = "runlease-run"
#: Compile-time setting: the URL of ``runlease serve`` that pipelines default to.
SERVER_URL_ENV = "RUNLEASE_KFP_SERVER_URL"


def default_store_access() -> StoreAccess:
    """Server mode when ``RUNLEASE_KFP_SERVER_URL`` is set (read at compile time), else the Secret mode."""
    url = os.environ.get(SERVER_URL_ENV)
    return StoreAccess.server(url) if url else StoreAccess()


@dataclass
class LeasedRun:
    """What ``leased_run`` created, for pipelines that want to return the report or reference the tasks."""

    pipeline_name: str
    exit_task: dsl.PipelineTask
    report_task: dsl.PipelineTask | None = None


def _current_pipeline() -> pipeline_context.Pipeline:
    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if pipeline is None:
        raise RuntimeError("runlease_kfp.leased_run() must be used inside a @dsl.pipeline function body")
    return pipeline


@contextmanager
def leased_run(
    store: StoreAccess | None = None,
    *,
    pipeline_name: str | None = None,
    audit_report: bool = True,
) -> Iterator[LeasedRun]:
    """Wrap the pipeline body: exit-handler revocation, audit report, identity and Secret wiring.

    ``store`` defaults to server mode, ``StoreAccess.server($RUNLEASE_KFP_SERVER_URL)``,
    when that variable is set at compile time (the cluster default: pods hold
    only a projected service-account token), else ``StoreAccess()`` (Secret
    ``runlease-store`` with keys ``RUNLEASE_HOME`` and ``RUNLEASE_MASTER_KEY``). ``pipeline_name``
    (what leases and policy principals see, ``kfp:<pipeline>:<task>``)
    defaults to the compiled pipeline's name.
    """
    pipeline = _current_pipeline()
    if pipeline.tasks:
        raise RuntimeError(
            "runlease_kfp.leased_run() must wrap the whole pipeline body; tasks "
            f"{', '.join(sorted(pipeline.tasks))} were created before it and would run outside the exit handler"
        )
    access = store if store is not None else default_store_access()
    name = pipeline_name or dsl_utils.maybe_rename_for_k8s(pipeline.name)
    exit_task = revoke_run_leases().set_caching_options(False).set_display_name("runlease: revoke run leases")
    run = LeasedRun(pipeline_name=name, exit_task=exit_task)
    handler = dsl.ExitHandler(exit_task, name=EXIT_HANDLER_NAME)
    with handler:
        yield run
        body = [t for t in handler.tasks if isinstance(t, dsl.PipelineTask)]
        if audit_report and body:
            report = run_audit_report().after(*body).set_caching_options(False)
            run.report_task = report.set_display_name("runlease: audit report")
    for task in list(pipeline.tasks.values()):
        if can_lease(task):
            bind_run_identity(task, name)
            if task.container_spec is not None:
                access.apply(task)
    if run.report_task is not None:
        # After its identity inputs are set: ignore_upstream_failure() reads every declared input.
        run.report_task.ignore_upstream_failure()
