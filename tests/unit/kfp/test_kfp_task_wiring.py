"""Compile-time wiring: identity inputs, field-path env, the Store Secret, and leased_run's shape."""

# No `from __future__ import annotations`: kfp reads component annotations as live types.

import pytest
from google.protobuf import json_format
from kfp import dsl

from runlease_kfp import StoreAccess, bind_run_identity, leased_run
from runlease_kfp.task_wiring import FIELD_PATH_ENV


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def leasing_step(x: int, runlease_run_id: str = "", runlease_pipeline: str = "", runlease_task: str = "") -> int:
    return x


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def plain_step(x: int) -> int:
    return x


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def half_step(runlease_run_id: str = "") -> None:
    pass


def spec_of(pipeline) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a compiled @dsl.pipeline, as dicts."""
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    platform = json_format.MessageToDict(pipeline.platform_spec)
    return spec, platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def params(task_spec: dict) -> dict:
    return {k: v.get("runtimeValue", {}).get("constant") for k, v in task_spec["inputs"]["parameters"].items()}


def test_bind_run_identity_sets_whole_value_placeholders_and_pod_env() -> None:
    @dsl.pipeline(name="wired")
    def wired():
        task = leasing_step(x=1)
        bind_run_identity(task, "wired")
        bind_run_identity(task, "wired")  # idempotent
        bind_run_identity(leasing_step(x=2, runlease_run_id=""), "wired")  # "" is the declared default: unset

    spec, executors = spec_of(wired)
    assert params(spec["root"]["dag"]["tasks"]["leasing-step"]) == {
        "x": 1.0,
        "runlease_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "runlease_pipeline": "wired",
        "runlease_task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER,
    }
    env = executors["exec-leasing-step"]["fieldPathAsEnv"]
    assert {(e["name"], e["fieldPath"]) for e in env} == set(FIELD_PATH_ENV.items()) and len(env) == 3
    assert "metadata.labels['pipeline/runid']" in FIELD_PATH_ENV.values()


@pytest.mark.parametrize(
    ("component", "kwargs", "message"),
    [
        (plain_step, {"x": 1}, "does not declare the runlease identity inputs"),
        (half_step, {}, "declares only some runlease identity inputs; add runlease_pipeline, runlease_task"),
        (leasing_step, {"x": 1, "runlease_run_id": "fixed"}, "already passes runlease_run_id='fixed'"),
    ],
)
def test_bind_run_identity_refuses_what_would_mis_bind(component, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        @dsl.pipeline(name="bad")
        def bad():
            bind_run_identity(component(**kwargs), "bad")


def test_store_access_mounts_the_secret_by_name_only() -> None:
    access = StoreAccess(secret_name="runlease-store", mount_path="/var/run/runlease",
                         settings={"RUNLEASE_ENV": "prod", "RUNLEASE_STORE": "local"})

    @dsl.pipeline(name="mounted")
    def mounted():
        task = leasing_step(x=1)
        access.apply(task)
        access.apply(task)  # idempotent

    spec, executors = spec_of(mounted)
    k8s = executors["exec-leasing-step"]
    [as_env] = k8s["secretAsEnv"]
    assert as_env["secretName"] == "runlease-store"
    assert {(m["secretKey"], m["envVar"]) for m in as_env["keyToEnv"]} == {
        ("RUNLEASE_HOME", "RUNLEASE_HOME"), ("RUNLEASE_MASTER_KEY", "RUNLEASE_MASTER_KEY")}
    [as_volume] = k8s["secretAsVolume"]
    assert as_volume["mountPath"] == "/var/run/runlease" and as_volume["secretName"] == "runlease-store"
    container = spec["deploymentSpec"]["executors"]["exec-leasing-step"]["container"]
    assert {e["name"]: e["value"] for e in container["env"]} == {"RUNLEASE_ENV": "prod", "RUNLEASE_STORE": "local"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret_name": "Not_A_Name"}, "not a valid Kubernetes Secret name"),
        ({"settings": {"RUNLEASE_MASTER_KEY": "abc"}}, "looks like a credential"),
        ({"settings": {"VAULT_TOKEN": "abc"}}, "looks like a credential"),
        ({"secret_env": {}, "mount_path": None}, "needs secret_env or mount_path"),
        ({"secret_env": {"bad key!": "X"}}, "not a valid Kubernetes Secret data key"),
        ({"secret_env": {"k": "1BAD"}}, "is not valid"),
        ({"mount_path": "relative/dir"}, "must be absolute"),
    ],
)
def test_store_access_refuses_bad_or_secret_looking_config(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        StoreAccess(**kwargs)


def test_leased_run_shape() -> None:
    @dsl.pipeline(name="shaped-pipeline")
    def shaped(x: int = 1):
        with leased_run(store=StoreAccess(secret_name="team-store")) as run:
            first = leasing_step(x=x)
            plain_step(x=first.output)
        assert run.report_task is not None and run.pipeline_name == "shaped-pipeline"

    spec, executors = spec_of(shaped)
    root = spec["root"]["dag"]["tasks"]
    exit_task = root["revoke-run-leases"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert exit_task["cachingOptions"] == {}  # caching off: a cached exit task would revoke nothing
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(body) == {"leasing-step", "plain-step", "run-audit-report"}
    report = body["run-audit-report"]
    assert sorted(report["dependentTasks"]) == ["leasing-step", "plain-step"]
    assert report["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    for name, task in (("revoke-run-leases", exit_task), ("leasing-step", body["leasing-step"]),
                       ("run-audit-report", report)):
        assert params(task)["runlease_run_id"] == dsl.PIPELINE_JOB_ID_PLACEHOLDER, name
        assert params(task)["runlease_pipeline"] == "shaped-pipeline"
    # The Secret goes only where a component can lease; the plain step gets nothing.
    assert set(executors) == {"exec-leasing-step", "exec-revoke-run-leases", "exec-run-audit-report"}
    assert all(e["secretAsEnv"][0]["secretName"] == "team-store" for e in executors.values())


def test_leased_run_outside_a_pipeline_or_after_tasks_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside a @dsl.pipeline"):
        with leased_run():
            pass
    with pytest.raises(RuntimeError, match="were created before it"):
        @dsl.pipeline(name="late")
        def late():
            plain_step(x=1)
            with leased_run():
                leasing_step(x=2)
