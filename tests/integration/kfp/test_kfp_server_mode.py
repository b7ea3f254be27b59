"""The example pipeline on kfp.local against a real ``runlease serve``: the components hold no key and no home.

The run-local process (and so every component subprocess kfp.local starts)
has only ``RUNLEASE_SERVER`` and ``RUNLEASE_TOKEN_FILE`` (a token of the test
issuer, shaped like a projected service-account token); ``HOME`` points at an
empty directory, so a fallback to ``~/.runlease`` would be seen. The leases,
their revocation by each block and the exit task, and the audit report all
go through the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState

from kfp_process_support import REPO
from support.oidc_issuer import sa_subject
from support.served_home import ServedHome, served, served_factory  # noqa: F401 - fixtures

EXAMPLE = REPO / "dags_examples" / "kfp_training_pipeline.py"


def pod_env(served: ServedHome, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    fake_home = tmp_path / "pod-home"
    fake_home.mkdir()
    env.update(HOME=str(fake_home), PYTHONUNBUFFERED="1", RUNLEASE_SERVER=served.url,
               RUNLEASE_TOKEN_FILE=str(served.token_file(served.issuer.token(lifetime=1800), "pod.token")))
    return env


@pytest.mark.slow
def test_example_pipeline_runs_on_kfp_local_against_the_server(served: ServedHome, tmp_path: Path) -> None:
    root = tmp_path / "pipeline-root"
    env = pod_env(served, tmp_path)
    assert not {"RUNLEASE_HOME", "RUNLEASE_MASTER_KEY"} & set(env)
    done = subprocess.run([sys.executable, str(EXAMPLE), "run-local", "--pipeline-root", str(root)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run_id = re.search(r"^KFP run id: (\S+)$", done.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert not (tmp_path / "pod-home" / ".runlease").exists(), "a component fell back to a local home"

    rt = served.local()
    try:
        events = list(rt.ledger.events(AuditQuery(run_id=run_id)))
        leases = rt.ledger.find_leases(run_id=run_id)
        assert rt.ledger.verify().ok
    finally:
        rt.close()
    leased = {e.task_id: e for e in events if e.action == "lease"}
    assert {task: e.path for task, e in leased.items()} == {
        "fetch-data": "dev/connections/warehouse",
        "train-model": "dev/tokens/experiment_tracker",
        "publish-model": "dev/connections/model_registry",
    }
    for event in leased.values():
        assert event.principal == sa_subject("ml", "pipeline-a")
        assert event.detail["verified"]["subject"] == sa_subject("ml", "pipeline-a")
        assert event.pipeline == "kfp-training-pipeline"  # the claim, recorded beside the proof
    assert len(leases) == 3 and all(lease.state is LeaseState.REVOKED for lease in leases)
    assert {lease.revoke_reason for lease in leases} == {"kfp component exited"}
    # The exit task ran through the server, found nothing left, and the report was built from it.
    [exit_output] = root.glob("kfp-training-pipeline-*/revoke-run-leases/executor_output.json")
    assert '"Output": 0' in exit_output.read_text()
    [report] = root.glob("kfp-training-pipeline-*/run-audit-report/markdown")
    text = report.read_text()
    assert f"KFP run `{run_id}`" in text and "still active: 0" in text
    assert all(lease.lease_id in text for lease in leases)
    served.assert_no_leak(done.stdout, done.stderr, where="the run's logs")
    for path in root.rglob("*"):
        if path.is_file():
            served.assert_no_leak(path.read_text(errors="replace"), where=str(path))
    served.assert_no_leak(served.server.log_text(), where="the server log")


@pytest.mark.slow
def test_exit_handler_revokes_a_killed_steps_lease_through_the_server(served: ServedHome, tmp_path: Path) -> None:
    """The revoke_run_leases body, as the exit task runs it, against leases a SIGKILLed step left."""
    from runlease.models import RunIdentity
    from runlease.runtime import open_runtime

    env = pod_env(served, tmp_path)
    leftover = open_runtime(served.client_settings(served.issuer.token())).broker.lease(
        "dev/connections/warehouse",
        RunIdentity(orchestrator="kfp", pipeline="kfp-training-pipeline", run_id="run-x", task_id="killed"), 600)
    # Another workload's lease in the same run id must survive the exit task.
    other = open_runtime(served.client_settings(served.issuer.token("finance", "ledger"))).broker.lease(
        "dev/connections/finance",
        RunIdentity(orchestrator="kfp", pipeline="kfp-training-pipeline", run_id="run-x", task_id="x"), 600)
    code = ("from runlease_kfp.run_cleanup import revoke_leases_of_run;"
            "print(revoke_leases_of_run({'runlease_run_id': 'run-x', 'runlease_pipeline': 'kfp-training-pipeline',"
            " 'runlease_task': 'revoke-run-leases'}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    rt = served.local()
    try:
        assert rt.ledger.get_lease(leftover.lease_id).state is LeaseState.REVOKED
        assert rt.ledger.get_lease(other.lease_id).state is LeaseState.ACTIVE
    finally:
        rt.close()


@pytest.mark.slow
def test_sigterm_revokes_through_the_server_and_output_stays_masked(served: ServedHome, tmp_path: Path) -> None:
    import json
    import signal
    import time

    from test_kfp_lease_process import COMPONENT

    script = tmp_path / "component.py"
    script.write_text(COMPONENT)
    ready, out = tmp_path / "ready", tmp_path / "out"
    executor_input = json.dumps({"inputs": {"parameterValues": {
        "runlease_run_id": "run-term", "runlease_pipeline": "proc-test", "runlease_task": "step"}}})
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, str(script), "sigterm", str(ready), "--executor_input",
                                 executor_input], stdout=sink, stderr=subprocess.STDOUT,
                                env=pod_env(served, tmp_path), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                assert proc.poll() is None, out.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    rt = served.local()
    try:
        [lease] = rt.ledger.find_leases(run_id="run-term")
    finally:
        rt.close()
    assert lease.state is LeaseState.REVOKED and lease.revoke_reason == "kfp component terminated by SIGTERM"
    text = out.read_text()
    assert "print: ***" in text
    served.assert_no_leak(text, where="the component's output")


@pytest.mark.slow
def test_an_abandoned_block_is_revoked_at_exit_through_the_server(served: ServedHome, tmp_path: Path) -> None:
    import json

    from test_kfp_lease_process import COMPONENT

    script = tmp_path / "component.py"
    script.write_text(COMPONENT)
    executor_input = json.dumps({"inputs": {"parameterValues": {
        "runlease_run_id": "run-abandon", "runlease_pipeline": "proc-test", "runlease_task": "step"}}})
    done = subprocess.run([sys.executable, str(script), "abandon", str(tmp_path / "ready"), "--executor_input",
                           executor_input], env=pod_env(served, tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "leaked? ***" in done.stdout
    served.assert_no_leak(done.stdout, done.stderr, where="the component's output")
    rt = served.local()
    try:
        [lease] = rt.ledger.find_leases(run_id="run-abandon")
    finally:
        rt.close()
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_reason == "kfp component process exited with the lease open"
