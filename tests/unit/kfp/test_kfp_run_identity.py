"""Run identity inside a component: from the ExecutorInput on argv, the pod label, the env."""

from __future__ import annotations

import json

import pytest

from runlease_kfp.errors import RunIdentityError
from runlease_kfp.run_identity import (
    NAMESPACE_ENV,
    PIPELINE_ENV,
    RUN_ID_ENV,
    SERVICE_ACCOUNT_ENV,
    TASK_ENV,
    executor_input_parameters,
    resolve_identity,
)


def argv_for(params: dict[str, object]) -> list[str]:
    """The command line kfp.dsl.executor_main gets (component_factory's args)."""
    doc = {"inputs": {"parameterValues": params}, "outputs": {"outputFile": "/tmp/x/executor_output.json"}}
    return ["/usr/bin/python3", "-m", "kfp.dsl.executor_main", "--component_module_path", "/tmp/c.py",
            "--executor_input", json.dumps(doc), "--function_to_execute", "train"]


IDENTITY = {"runlease_run_id": "4f1c9d", "runlease_pipeline": "training", "runlease_task": "train-model"}


def test_identity_from_executor_input_on_argv() -> None:
    who = resolve_identity(argv=argv_for({**IDENTITY, "environment": "dev"}), env={})
    assert (who.orchestrator, who.pipeline, who.run_id, who.task_id) == ("kfp", "training", "4f1c9d", "train-model")
    assert who.principal is None
    assert who.subject == "kfp:training:train-model"


def test_executor_input_equals_form_and_absence() -> None:
    doc = json.dumps({"inputs": {"parameterValues": {"a": "b"}}})
    assert executor_input_parameters(["x", f"--executor_input={doc}"]) == {"a": "b"}
    assert executor_input_parameters(["pytest", "-q"]) == {}
    with pytest.raises(RunIdentityError, match="not valid JSON"):
        executor_input_parameters(["x", "--executor_input", "{not json"])


def test_pod_label_must_agree_with_the_parameter() -> None:
    argv = argv_for(IDENTITY)
    assert resolve_identity(argv=argv, env={RUN_ID_ENV: "4f1c9d"}).run_id == "4f1c9d"
    with pytest.raises(RunIdentityError, match="run id mismatch"):
        resolve_identity(argv=argv, env={RUN_ID_ENV: "another-run"})


def test_pod_label_alone_supplies_the_run_id() -> None:
    params = {**IDENTITY, "runlease_run_id": ""}
    assert resolve_identity(argv=argv_for(params), env={RUN_ID_ENV: "from-label"}).run_id == "from-label"


def test_unsubstituted_placeholder_is_refused_with_a_hint() -> None:
    params = {**IDENTITY, "runlease_run_id": "run-{{$.pipeline_job_uuid}}"}
    with pytest.raises(RunIdentityError, match="whole parameter value") as err:
        resolve_identity(argv=argv_for(params), env={})
    assert "runlease_run_id" in str(err.value)


def test_missing_identity_names_what_is_missing_and_how_to_wire_it() -> None:
    with pytest.raises(RunIdentityError) as err:
        resolve_identity(argv=["pytest"], env={})
    message = str(err.value)
    assert "runlease_run_id, runlease_pipeline, runlease_task" in message and "leased_run" in message


def test_env_fallbacks_and_service_account_principal() -> None:
    env = {RUN_ID_ENV: "r-1", PIPELINE_ENV: "etl", TASK_ENV: "load", NAMESPACE_ENV: "team-ml",
           SERVICE_ACCOUNT_ENV: "pipeline-runner"}
    who = resolve_identity(inputs={}, env=env)
    assert (who.pipeline, who.run_id, who.task_id) == ("etl", "r-1", "load")
    assert who.principal == "system:serviceaccount:team-ml:pipeline-runner"


def test_explicit_inputs_win_over_argv() -> None:
    who = resolve_identity(inputs=IDENTITY, argv=argv_for({**IDENTITY, "runlease_task": "other"}), env={})
    assert who.task_id == "train-model"
