"""Which KFP run, pipeline and task a component runs for: the :class:`RunIdentity` of its leases.

KFP gives a component its run identity in two ways, and this module reads both:

* **Placeholders as parameters.** ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``
  (``{{$.pipeline_job_uuid}}``) and ``dsl.PIPELINE_TASK_NAME_PLACEHOLDER``
  (``{{$.pipeline_task_name}}``) are substituted by the KFP driver only when
  they are the *whole* value of a task input, so each travels in its own
  parameter (:data:`RUN_ID_INPUT`, :data:`TASK_INPUT`); the pipeline name is a
  constant (:data:`PIPELINE_INPUT`). ``runlease_kfp.task_wiring`` sets them on
  every task. Inside the component they are read from the ExecutorInput that
  KFP passes on the command line: a lightweight component runs as
  ``python3 -m kfp.dsl.executor_main ... --executor_input {{$}}
  --function_to_execute <fn>`` (kfp 2.16 ``dsl/component_factory.py``,
  ``_get_command_and_args_for_lightweight_component``; parsed by
  ``dsl/executor_main.py``), and ``inputs.parameterValues`` there holds every
  task input, already substituted. So ``runlease_kfp.lease()`` needs no
  arguments besides the path. kfp.local substitutes the same placeholders
  (``local/placeholder_utils.py``: one random id per local pipeline run).

* **The pod label** ``pipeline/runid``, exposed as :data:`RUN_ID_ENV` with
  kfp-kubernetes ``use_field_path_as_env``. On a cluster both are present and
  must agree; a mismatch means a mis-wired task and is refused rather than
  binding leases to the wrong run. kfp.local ignores kfp-kubernetes settings,
  so locally only the parameter is there.

The service account and namespace (also field paths) become the lease's
``principal``, in Kubernetes' own user-name form
``system:serviceaccount:<namespace>:<name>``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from runlease.models import RunIdentity

from runlease_kfp.errors import RunIdentityError

ORCHESTRATOR = "kfp"

#: Component inputs that carry the identity. A component that leases declares
#: them with ``""`` defaults; the pipeline helper fills them in.
RUN_ID_INPUT = "runlease_run_id"
PIPELINE_INPUT = "runlease_pipeline"
TASK_INPUT = "runlease_task"
IDENTITY_INPUTS: tuple[str, ...] = (RUN_ID_INPUT, PIPELINE_INPUT, TASK_INPUT)

#: Environment set on the pod by the pipeline helper (field paths and plain env).
RUN_ID_ENV = "RUNLEASE_KFP_RUN_ID"
PIPELINE_ENV = "RUNLEASE_KFP_PIPELINE"
TASK_ENV = "RUNLEASE_KFP_TASK"
NAMESPACE_ENV = "RUNLEASE_KFP_NAMESPACE"
SERVICE_ACCOUNT_ENV = "RUNLEASE_KFP_SERVICE_ACCOUNT"

#: Kubernetes field paths behind those variables.
RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"
NAMESPACE_FIELD_PATH = "metadata.namespace"
SERVICE_ACCOUNT_FIELD_PATH = "spec.serviceAccountName"

_EXECUTOR_INPUT_FLAG = "--executor_input"


def executor_input_parameters(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``inputs.parameterValues`` of the ExecutorInput on this process's command line.

    Empty when the process is not a KFP component (a unit test, a script).
    A malformed ExecutorInput is an error: KFP always passes valid JSON, so
    anything else means the process was started wrongly.
    """
    args = list(sys.argv if argv is None else argv)
    raw: str | None = None
    for i, arg in enumerate(args):
        if arg == _EXECUTOR_INPUT_FLAG and i + 1 < len(args):
            raw = args[i + 1]
        elif arg.startswith(_EXECUTOR_INPUT_FLAG + "="):
            raw = arg.split("=", 1)[1]
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        raise RunIdentityError(f"{_EXECUTOR_INPUT_FLAG} on the command line is not valid JSON") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    params = inputs.get("parameterValues") if isinstance(inputs, dict) else None
    return dict(params) if isinstance(params, dict) else {}


def is_unresolved_placeholder(value: str) -> bool:
    """True for a KFP placeholder (``{{$...}}``) that nobody substituted."""
    return "{{$" in value


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text or is_unresolved_placeholder(text):
        return None
    return text


def resolve_identity(
    inputs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> RunIdentity:
    """Build the run identity of this component process.

    ``inputs`` are the component's identity parameters when the caller has
    them (the ready components pass their own arguments); otherwise they
    are read from the ExecutorInput on the command line. Parameters win over
    the plain environment fallbacks (:data:`PIPELINE_ENV`, :data:`TASK_ENV`),
    and the run id must agree with the ``pipeline/runid`` pod label when both
    are present.
    """
    env = os.environ if env is None else env
    params = dict(executor_input_parameters(argv) if inputs is None else inputs)
    raw_run_id = params.get(RUN_ID_INPUT)
    param_run_id = _clean(raw_run_id)
    label_run_id = _clean(env.get(RUN_ID_ENV))
    if param_run_id and label_run_id and param_run_id != label_run_id:
        raise RunIdentityError(
            f"run id mismatch: input {RUN_ID_INPUT}={param_run_id!r} but the pod label pipeline/runid "
            f"({RUN_ID_ENV}) is {label_run_id!r}; pass dsl.PIPELINE_JOB_ID_PLACEHOLDER as the whole value"
        )
    run_id = param_run_id or label_run_id
    pipeline = _clean(params.get(PIPELINE_INPUT)) or _clean(env.get(PIPELINE_ENV))
    task = _clean(params.get(TASK_INPUT)) or _clean(env.get(TASK_ENV))

    missing = [name for name, value in ((RUN_ID_INPUT, run_id), (PIPELINE_INPUT, pipeline), (TASK_INPUT, task))
               if value is None]
    if missing:
        hint = ""
        if isinstance(raw_run_id, str) and is_unresolved_placeholder(raw_run_id):
            hint = (f" ({RUN_ID_INPUT} arrived unsubstituted as {raw_run_id!r}: KFP substitutes a placeholder only "
                    "when it is the whole parameter value)")
        raise RunIdentityError(
            f"cannot tell which KFP run this component belongs to: no {', '.join(missing)}{hint}. "
            f"Declare the inputs {', '.join(IDENTITY_INPUTS)} (str, default \"\") on the component and build the "
            "pipeline inside runlease_kfp.leased_run() (or call runlease_kfp.bind_run_identity(task, ...))"
        )
    namespace = _clean(env.get(NAMESPACE_ENV))
    account = _clean(env.get(SERVICE_ACCOUNT_ENV))
    principal = f"system:serviceaccount:{namespace}:{account}" if namespace and account else None
    return RunIdentity(orchestrator=ORCHESTRATOR, pipeline=pipeline, run_id=run_id, task_id=task,
                       principal=principal)
