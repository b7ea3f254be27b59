"""runlease_kfp.lease() in a real component-like process: exit, exception, SIGTERM, abandonment.

kfp.local skips a pipeline's exit task when a step fails, so revocation on
failure is tested here, directly on the helper, in a subprocess started the
way KFP starts a component (``--executor_input`` JSON on the command line,
root logging configured on stdout as kfp/dsl/executor_main.py does).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState

from kfp_process_support import StockedHome, assert_no_leak

TIMEOUT = 60

COMPONENT = r'''
import logging, os, sys, time
logging.basicConfig(stream=sys.stdout, format="[KFP Executor %(levelname)s]: %(message)s", level=logging.INFO)
import runlease_kfp

mode, ready_file = sys.argv[1], sys.argv[2]
if mode == "abandon":
    held = runlease_kfp.lease("dev/connections/warehouse")
    conn = held.__enter__()          # never exited: the atexit backstop must revoke
    print("leaked?", conn["password"])
    sys.exit(0)
with runlease_kfp.lease("dev/connections/warehouse") as conn:
    pw = conn["password"]
    print("print:", pw)
    logging.info("log: %s", pw)
    print("stderr:", pw, file=sys.stderr)
    if mode == "raise":
        raise RuntimeError(f"could not connect with password {pw}")
    if mode == "sigterm":
        sys.stdout.flush()
        open(ready_file, "w").close()
        time.sleep(TIMEOUT)
print("after the block")
'''.replace("TIMEOUT", str(TIMEOUT))


def executor_input(run_id: str) -> str:
    return json.dumps({"inputs": {"parameterValues": {
        "runlease_run_id": run_id, "runlease_pipeline": "proc-test", "runlease_task": "step"}}})


def start(home: StockedHome, tmp_path: Path, mode: str, run_id: str) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
    script = tmp_path / "component.py"
    script.write_text(COMPONENT)
    out, err, ready = tmp_path / f"{mode}.out", tmp_path / f"{mode}.err", tmp_path / f"{mode}.ready"
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, str(ready), "--executor_input", executor_input(run_id)],
        stdout=out.open("wb"), stderr=err.open("wb"), env=home.env, cwd=tmp_path,
    )
    return proc, out, err, ready


def finish(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def lease_of(home: StockedHome, run_id: str):
    rt = home.runtime()
    try:
        [lease] = rt.ledger.find_leases(run_id=run_id)
        events = list(rt.ledger.events(AuditQuery(run_id=run_id)))
        assert rt.ledger.verify().ok
        return lease, events
    finally:
        rt.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "exit_code", "reason"),
    [
        ("exit", 0, "kfp component exited"),
        ("raise", 1, "kfp component failed: RuntimeError"),
    ],
)
def test_revoked_on_exit_and_on_exception_and_masked(stocked_home: StockedHome, tmp_path: Path, mode: str,
                                                     exit_code: int, reason: str) -> None:
    run_id = f"proc-{mode}"
    proc, out, err, _ = start(stocked_home, tmp_path, mode, run_id)
    assert finish(proc) == exit_code
    stdout, stderr = out.read_text(), err.read_text()
    assert_no_leak(stocked_home, stdout, stderr)
    assert "print: ***" in stdout and "log: ***" in stdout and "stderr: ***" in stderr
    if mode == "raise":
        assert "RuntimeError: could not connect with password ***" in stderr
    lease, events = lease_of(stocked_home, run_id)
    assert lease.state is LeaseState.REVOKED and lease.revoke_reason == reason
    assert [e.action for e in events] == ["lease", "revoke"]
    assert_no_leak(stocked_home, *(e.model_dump_json() for e in events), where="the audit trail")


@pytest.mark.slow
def test_sigterm_revokes_then_exits_143(stocked_home: StockedHome, tmp_path: Path) -> None:
    run_id = "proc-sigterm"
    proc, out, err, ready = start(stocked_home, tmp_path, "sigterm", run_id)
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, "component never got its lease"
        time.sleep(0.05)
    lease, _ = lease_of(stocked_home, run_id)
    assert lease.state is LeaseState.ACTIVE
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 128 + signal.SIGTERM
    stdout, stderr = out.read_text(), err.read_text()
    assert_no_leak(stocked_home, stdout, stderr)
    assert "after the block" not in stdout
    lease, events = lease_of(stocked_home, run_id)
    assert lease.state is LeaseState.REVOKED and lease.revoke_reason == "kfp component terminated by SIGTERM"
    assert events[-1].action == "revoke" and events[-1].task_id == "step"


@pytest.mark.slow
def test_abandoned_lease_is_revoked_at_interpreter_exit(stocked_home: StockedHome, tmp_path: Path) -> None:
    run_id = "proc-abandon"
    proc, out, err, _ = start(stocked_home, tmp_path, "abandon", run_id)
    assert finish(proc) == 0
    assert_no_leak(stocked_home, out.read_text(), err.read_text())
    assert "leaked? ***" in out.read_text()
    lease, _ = lease_of(stocked_home, run_id)
    assert lease.state is LeaseState.REVOKED
    assert lease.revoke_reason == "kfp component process exited with the lease open"
