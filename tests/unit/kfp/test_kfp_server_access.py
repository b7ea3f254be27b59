"""StoreAccess in server mode: what a compiled task gets (URL, token path, PodDefault label, CA), what is
refused, the PodDefault manifest, and leased_run's default from RUNLEASE_KFP_SERVER_URL."""

# No `from __future__ import annotations`: kfp reads component annotations as live types.

import pytest
from google.protobuf import json_format
from kfp import dsl

from runlease_kfp import StoreAccess, leased_run, pod_default_manifest
from runlease_kfp.store_access import CA_MOUNT_PATH, PROJECTED_TOKEN_PATH, TOKEN_POD_LABEL

URL = "https://runlease.runlease.svc:8443"


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def leasing_step(x: int, runlease_run_id: str = "", runlease_pipeline: str = "", runlease_task: str = "") -> int:
    return x


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def plain_step(x: int) -> int:
    return x


def compiled(pipeline) -> tuple[dict, dict]:
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    platform = json_format.MessageToDict(pipeline.platform_spec)
    return spec, platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def env_of(spec: dict, executor: str) -> dict:
    return {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][executor]["container"].get("env", [])}


def test_server_mode_gives_leasing_tasks_url_token_label_and_ca_and_nothing_else() -> None:
    access = StoreAccess.server(URL, server_ca_config_map="runlease-ca", settings={"RUNLEASE_ENV": "prod"})

    @dsl.pipeline(name="served")
    def served():
        with leased_run(store=access):
            leasing_step(x=1)
            plain_step(x=2)

    spec, executors = compiled(served)
    assert env_of(spec, "exec-leasing-step") == {
        "RUNLEASE_SERVER": URL, "RUNLEASE_TOKEN_FILE": PROJECTED_TOKEN_PATH,
        "RUNLEASE_SERVER_CA": f"{CA_MOUNT_PATH}/ca.crt", "RUNLEASE_ENV": "prod"}
    k8s = executors["exec-leasing-step"]
    assert k8s["podMetadata"]["labels"] == dict([TOKEN_POD_LABEL])
    assert k8s["configMapAsVolume"][0]["mountPath"] == CA_MOUNT_PATH
    assert "secretAsEnv" not in k8s and "secretAsVolume" not in k8s
    assert env_of(spec, "exec-plain-step") == {} and "exec-plain-step" not in executors  # no access for others


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "ftp://runlease"}, "http"),
    ({"url": "https://user:pw@runlease:8443"}, "credentials"),  # runlease: allow connection-uri-credentials (test fixture)
    ({"url": "https://runlease:8443/?token=x"}, "credentials"),
    ({"url": URL, "token_path": "relative/token"}, "absolute"),
    ({"url": URL, "server_ca_config_map": "Not_A_Name"}, "ConfigMap"),
])
def test_server_mode_refuses_what_would_leak_or_break(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        StoreAccess.server(**kwargs)
    with pytest.raises(ValueError, match="mounts no Secret"):
        StoreAccess(server_url=URL)  # the Secret defaults would mount the key beside the token


def test_the_automounted_token_needs_no_pod_default_label() -> None:
    access = StoreAccess.server(URL, token_path="/var/run/secrets/kubernetes.io/serviceaccount/token")

    @dsl.pipeline(name="automounted")
    def automounted():
        with leased_run(store=access):
            leasing_step(x=1)

    spec, executors = compiled(automounted)
    assert "podMetadata" not in executors["exec-leasing-step"]
    assert env_of(spec, "exec-leasing-step")["RUNLEASE_TOKEN_FILE"].endswith("serviceaccount/token")


def test_leased_run_defaults_to_server_mode_from_the_compile_time_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_KFP_SERVER_URL", URL)

    @dsl.pipeline(name="defaulted")
    def defaulted():
        with leased_run():
            leasing_step(x=1)

    spec, executors = compiled(defaulted)
    assert env_of(spec, "exec-leasing-step")["RUNLEASE_SERVER"] == URL
    assert "secretAsEnv" not in executors["exec-leasing-step"]


def test_pod_default_manifest_projects_an_audience_bound_token_into_labelled_pods() -> None:
    manifest = pod_default_manifest("team-a")
    assert manifest["kind"] == "PodDefault" and manifest["metadata"]["namespace"] == "team-a"
    assert manifest["spec"]["selector"] == {"matchLabels": dict([TOKEN_POD_LABEL])}
    [source] = manifest["spec"]["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"] == {"audience": "runlease", "expirationSeconds": 3600, "path": "token"}
    assert manifest["spec"]["volumeMounts"][0]["mountPath"] + "/token" == PROJECTED_TOKEN_PATH
    with pytest.raises(ValueError, match="600"):
        pod_default_manifest("team-a", expiration_seconds=60)
