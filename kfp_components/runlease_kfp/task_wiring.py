"""Wire a KFP task's run identity: placeholders as whole-value inputs, pod facts as env.

One call, :func:`bind_run_identity`, does everything a task needs so the
component can tell which run it leases for (see
:mod:`runlease_kfp.run_identity` for how the component reads it back):

* ``runlease_run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER`` and
  ``runlease_task = dsl.PIPELINE_TASK_NAME_PLACEHOLDER``, each the whole
  value of its own input, because the KFP driver substitutes a placeholder
  only then; ``runlease_pipeline`` = the pipeline's name, a constant;
* kfp-kubernetes ``use_field_path_as_env`` for the ``pipeline/runid`` pod
  label, the namespace and the service account.

Inputs are added to a task after it was created by writing into
``task.inputs``: the compiler builds the task's ``inputs.parameters`` from
exactly that mapping (kfp 2.16 ``compiler/pipeline_spec_builder.py``,
``build_task_spec_for_task``: ``for input_name, input_value in
task.inputs.items()``, and it adds entries there itself for resources).
Only inputs the component declares are set, with their declared type
checked, so the compiled spec is the same as if the author had passed them.
"""

from __future__ import annotations

from typing import Any

from kfp import dsl, kubernetes

from runlease_kfp.run_identity import (
    IDENTITY_INPUTS,
    NAMESPACE_ENV,
    NAMESPACE_FIELD_PATH,
    PIPELINE_INPUT,
    RUN_ID_ENV,
    RUN_ID_FIELD_PATH,
    RUN_ID_INPUT,
    SERVICE_ACCOUNT_ENV,
    SERVICE_ACCOUNT_FIELD_PATH,
    TASK_INPUT,
)

#: Field-path env every lease-capable task gets (env name -> Kubernetes field path).
FIELD_PATH_ENV: dict[str, str] = {
    RUN_ID_ENV: RUN_ID_FIELD_PATH,
    NAMESPACE_ENV: NAMESPACE_FIELD_PATH,
    SERVICE_ACCOUNT_ENV: SERVICE_ACCOUNT_FIELD_PATH,
}


def identity_arguments(pipeline_name: str) -> dict[str, str]:
    """The identity inputs and their values: two bare placeholders and the pipeline name."""
    if not pipeline_name or "{{" in pipeline_name:
        raise ValueError(f"pipeline name {pipeline_name!r} must be a plain, non-empty string")
    return {
        RUN_ID_INPUT: dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        PIPELINE_INPUT: pipeline_name,
        TASK_INPUT: dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    }


def declared_identity_inputs(task: dsl.PipelineTask) -> list[str]:
    """The identity inputs the task's component declares (all three, or none, for a valid component)."""
    inputs = task.component_spec.inputs or {}
    return [name for name in IDENTITY_INPUTS if name in inputs]


def can_lease(task: dsl.PipelineTask) -> bool:
    """True when the task's component declares the identity inputs, i.e. may call ``runlease_kfp.lease``."""
    return bool(declared_identity_inputs(task))


def bind_run_identity(task: dsl.PipelineTask, pipeline_name: str) -> dsl.PipelineTask:
    """Give ``task`` its run identity (idempotent). Returns the task, like kfp-kubernetes helpers do."""
    component = task.component_spec.name
    declared = declared_identity_inputs(task)
    if not declared:
        raise ValueError(
            f"component {component!r} does not declare the runlease identity inputs "
            f"{', '.join(IDENTITY_INPUTS)} (str, default \"\"); a component that leases needs them"
        )
    missing = [name for name in IDENTITY_INPUTS if name not in declared]
    if missing:
        raise ValueError(f"component {component!r} declares only some runlease identity inputs; add {', '.join(missing)}")
    for name, value in identity_arguments(pipeline_name).items():
        _set_input(task, name, value)
    if task.container_spec is not None:
        _add_field_path_env(task)
    return task


def _set_input(task: dsl.PipelineTask, name: str, value: str) -> None:
    spec = task.component_spec.inputs[name]
    if spec.type != "String":
        raise ValueError(f"input {name!r} of component {task.component_spec.name!r} must be a str, not {spec.type}")
    current: Any = task.inputs.get(name)
    if current not in (None, "") and current != value:
        raise ValueError(
            f"task {task.name!r} already passes {name}={current!r}; leave it to runlease_kfp "
            f"(it must be exactly {value!r})"
        )
    task.inputs[name] = value


def _add_field_path_env(task: dsl.PipelineTask) -> None:
    existing = {entry.get("name") for entry in task.platform_config.get("kubernetes", {}).get("fieldPathAsEnv", [])}
    for env_name, field_path in FIELD_PATH_ENV.items():
        if env_name not in existing:
            kubernetes.use_field_path_as_env(task, env_name=env_name, field_path=field_path)
