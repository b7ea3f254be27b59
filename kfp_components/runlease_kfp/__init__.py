"""runlease for Kubeflow Pipelines v2: components lease credentials at runtime, bound to the run.

In component code (runs in the pod)::

    with runlease_kfp.lease("prod/connections/warehouse") as conn:
        ...

In the pipeline definition (compile time), on a cluster with ``runlease serve``::

    with runlease_kfp.leased_run(store=runlease_kfp.StoreAccess.server("https://runlease.runlease.svc:8443")):
        ...

(the pod then holds only its projected service-account token; the Secret
mode, ``StoreAccess(secret_name=...)``, remains for one-machine setups).

The pipeline-side names (``leased_run``, ``StoreAccess``, ``bind_run_identity``,
the ready components) import kfp's DSL and kfp-kubernetes; they load on first
use, so ``import runlease_kfp`` inside a component stays light and the
component modules can import this package without a cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

from runlease_kfp.errors import RevocationError, RunIdentityError
from runlease_kfp.leasing import lease
from runlease_kfp.run_identity import IDENTITY_INPUTS, PIPELINE_INPUT, RUN_ID_INPUT, TASK_INPUT, resolve_identity

_LAZY: dict[str, str] = {
    "leased_run": "runlease_kfp.pipeline",
    "LeasedRun": "runlease_kfp.pipeline",
    "StoreAccess": "runlease_kfp.store_access",
    "pod_default_manifest": "runlease_kfp.store_access",
    "bind_run_identity": "runlease_kfp.task_wiring",
    "revoke_run_leases": "runlease_kfp.components.revoke_run_leases",
    "run_audit_report": "runlease_kfp.components.run_audit_report",
}

__all__ = [
    "IDENTITY_INPUTS",
    "PIPELINE_INPUT",
    "RUN_ID_INPUT",
    "TASK_INPUT",
    "RevocationError",
    "RunIdentityError",
    "lease",
    "resolve_identity",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runlease_kfp' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
