"""Compile the example pipeline to YAML: no secret in it, server mode wired, placeholders whole.

Compiled in a subprocess that has the store's settings (RUNLEASE_HOME and
RUNLEASE_MASTER_KEY) in its environment, as a developer's shell would: none
of it may end up in the YAML, which is uploaded to KFP and readable by
everyone who can see the pipeline.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kfp_process_support import REPO, StockedHome, assert_no_leak

EXAMPLE = REPO / "dags_examples" / "kfp_training_pipeline.py"
LEASING_TASKS = {"fetch-data", "train-model", "publish-model", "revoke-run-leases", "run-audit-report"}
RUN_ID = "{{$.pipeline_job_uuid}}"
TASK_NAME = "{{$.pipeline_task_name}}"


@pytest.fixture()
def compiled(stocked_home: StockedHome, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    out = tmp_path / "pipeline.yaml"
    done = subprocess.run([sys.executable, str(EXAMPLE), "compile", str(out)], env=stocked_home.env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform


def all_tasks(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from spec["root"]["dag"]["tasks"].items()
    for component in spec["components"].values():
        yield from component.get("dag", {}).get("tasks", {}).items()


def constants(node: Any) -> Iterator[str]:
    """Every string constant a task passes (runtimeValue.constant), at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "constant" and isinstance(value, str):
                yield value
            else:
                yield from constants(value)
    elif isinstance(node, list):
        for item in node:
            yield from constants(item)


def test_no_secret_and_no_store_setting_in_the_yaml(stocked_home: StockedHome, compiled) -> None:
    text, _, _ = compiled
    assert_no_leak(stocked_home, text, where="the compiled pipeline YAML")
    assert str(stocked_home.settings.home) not in text  # the env is not baked in either


def test_every_leasing_task_gets_the_identity_as_whole_value_placeholders(compiled) -> None:
    _, spec, _ = compiled
    seen = set()
    for name, task in all_tasks(spec):
        params = task.get("inputs", {}).get("parameters", {})
        if "runlease_run_id" not in params:
            continue
        seen.add(name)
        assert params["runlease_run_id"] == {"runtimeValue": {"constant": RUN_ID}}, name
        assert params["runlease_task"] == {"runtimeValue": {"constant": TASK_NAME}}, name
        assert params["runlease_pipeline"] == {"runtimeValue": {"constant": "kfp-training-pipeline"}}, name
    assert seen == LEASING_TASKS
    for name, task in all_tasks(spec):
        for value in constants(task):
            if "{{$" in value:
                assert value in (RUN_ID, TASK_NAME), f"{name} embeds a placeholder in a larger value: {value!r}"


def test_server_mode_wires_url_token_and_label_and_mounts_no_secret(compiled) -> None:
    """The example is in server mode: no Secret, no key; a URL, a token path and the PodDefault label."""
    text, spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{name}" for name in LEASING_TASKS}
    assert "secretAsEnv" not in text and "secretAsVolume" not in text and "RUNLEASE_MASTER_KEY" not in text
    for name, k8s in executors.items():
        assert k8s["podMetadata"]["labels"] == {"runlease.dev/workload-token": "projected"}, name
        assert {"name": "RUNLEASE_KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in k8s["fieldPathAsEnv"]
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][name]["container"]["env"]}
        assert env == {"RUNLEASE_SERVER": "https://runlease.runlease.svc.cluster.local:8443",
                       "RUNLEASE_TOKEN_FILE": "/var/run/secrets/runlease/token"}, name
    # The exit task is the ExitHandler's: it runs after the body whatever happened there.
    exit_task = spec["root"]["dag"]["tasks"]["revoke-run-leases"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    # No input of any component is a credential: only data, names and the identity.
    inputs = {n for c in spec["components"].values() for n in c.get("inputDefinitions", {}).get("parameters", {})}
    assert inputs <= {"environment", "source_table", "runlease_run_id", "runlease_pipeline", "runlease_task",
                      "pipelinechannel--environment", "pipelinechannel--source_table"}
