"""Run pipelines with kfp.local (SubprocessRunner(use_venv=False)) against the embedded store.

Each run is a subprocess (kfp.local keeps global state, and each component
is a further ``python -m kfp.dsl.executor_main`` subprocess that inherits
RUNLEASE_HOME / RUNLEASE_MASTER_KEY from it). kfp.local ignores
kfp-kubernetes settings and skips the exit task after a failed step, so
these runs succeed; failure paths are tested on the helper in
test_kfp_lease_process.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState
from runlease_kfp.local_run import audit_position, run_ids_since
from runlease_kfp.run_cleanup import EXIT_REASON

from kfp_process_support import REPO, StockedHome, assert_no_leak

EXAMPLE = REPO / "dags_examples" / "kfp_training_pipeline.py"
LEAKY = Path(__file__).with_name("leaky_pipeline.py")
TIMEOUT = 240


def run(home: StockedHome, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *args], env=home.env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_nothing_written_leaks(home: StockedHome, done: subprocess.CompletedProcess[str], root: Path) -> None:
    assert_no_leak(home, done.stdout, done.stderr, where="the local run's logs")
    written = files_under(root)
    assert written, "the run wrote nothing to its pipeline root"
    for path, data in written.items():
        for value in home.leaked_values:
            assert value.encode() not in data, f"a stored secret leaked into {path.relative_to(root)}"


@pytest.mark.slow
def test_example_pipeline_runs_locally_with_run_bound_leases(stocked_home: StockedHome, tmp_path: Path) -> None:
    root = tmp_path / "pipeline-root"
    done = run(stocked_home, tmp_path, str(EXAMPLE), "run-local", "--pipeline-root", str(root))
    match = re.search(r"^KFP run id: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout[-2000:]
    run_id = match.group(1)

    rt = stocked_home.runtime()
    try:
        events = list(rt.ledger.events(AuditQuery(run_id=run_id)))
        leases = rt.ledger.find_leases(run_id=run_id)
        assert rt.ledger.verify().ok
    finally:
        rt.close()
    by_task = {e.task_id: e for e in events if e.action == "lease"}
    assert {task: e.path for task, e in by_task.items()} == {
        "fetch-data": "dev/connections/warehouse",
        "train-model": "dev/tokens/experiment_tracker",
        "publish-model": "dev/connections/model_registry",
    }
    assert {e.run_id for e in events} == {run_id}
    assert {(e.orchestrator, e.pipeline) for e in events} == {("kfp", "kfp-training-pipeline")}
    assert len(leases) == 3 and all(lease.state is LeaseState.REVOKED for lease in leases)
    revoked = {e.lease_id: e.detail["reason"] for e in events if e.action == "revoke"}
    assert revoked == {lease.lease_id: "kfp component exited" for lease in leases}
    assert_no_leak(stocked_home, *(e.model_dump_json() for e in events), where="the audit trail")

    # The report artifact is there, names every lease, and says none is left active.
    [report] = root.glob("kfp-training-pipeline-*/run-audit-report/markdown")
    text = report.read_text()
    assert f"KFP run `{run_id}`" in text and "still active: 0" in text
    assert all(lease.lease_id in text for lease in leases)
    # The exit task ran after the body and found nothing left to revoke.
    [exit_output] = root.glob("kfp-training-pipeline-*/revoke-run-leases/executor_output.json")
    assert '"Output": 0' in exit_output.read_text()
    assert_nothing_written_leaks(stocked_home, done, root)


@pytest.mark.slow
def test_exit_task_revokes_what_a_killed_step_left_and_logs_stay_masked(stocked_home: StockedHome,
                                                                         tmp_path: Path) -> None:
    root = tmp_path / "pipeline-root"
    before = audit_position(stocked_home.settings)
    done = run(stocked_home, tmp_path, str(LEAKY), str(root))
    [run_id] = run_ids_since(before, "leaky-pipeline", stocked_home.settings)

    rt = stocked_home.runtime()
    try:
        leases = {lease.identity.task_id: lease for lease in rt.ledger.find_leases(run_id=run_id)}
        assert rt.ledger.verify().ok
    finally:
        rt.close()
    assert set(leases) == {"leaky-step", "killed-step"}
    assert all(lease.state is LeaseState.REVOKED for lease in leases.values())
    assert leases["leaky-step"].revoke_reason == "kfp component exited"
    assert leases["killed-step"].revoke_reason == EXIT_REASON

    # Every way leaky_step tried to print the password came out masked.
    for line in ("password via print: ***", "password via logging: ***", "password via stderr: ***",
                 "dsn: postgresql://etl:***@warehouse.internal/analytics"):
        assert line in done.stdout, line
    assert_nothing_written_leaks(stocked_home, done, root)
