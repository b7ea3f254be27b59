"""runlease_kfp.lease() in-process on a real embedded store: bound, masked, revoked with a reason.

The failure paths that need a real process (SIGTERM, a dying component's
traceback, stdout at exit) are in tests/integration/kfp/test_kfp_lease_process.py.
"""

from __future__ import annotations

import io
import logging
import signal
import sqlite3
import sys

import pytest

from runlease.errors import AccessDeniedError, SecretNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState
from runlease_kfp import lease
from runlease_kfp.errors import RevocationError, RunIdentityError
from runlease_kfp.leasing import open_leases
from runlease_kfp.run_identity import PIPELINE_ENV, RUN_ID_ENV, TASK_ENV
from runlease_kfp.termination import guard

from kfp_unit_support import StockedHome


@pytest.fixture()
def in_task(stocked_home: StockedHome, monkeypatch: pytest.MonkeyPatch) -> StockedHome:
    """Identity from the env fallbacks (what a process outside KFP can use)."""
    monkeypatch.setenv(RUN_ID_ENV, "run-77")
    monkeypatch.setenv(PIPELINE_ENV, "training")
    monkeypatch.setenv(TASK_ENV, "fetch-data")
    return stocked_home


def throwaway_std_streams(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The guard wraps sys.stdout/stderr for good; let it wrap throwaway ones, not pytest's.

    Called in the test body: pytest's capture re-installs its own streams between setup and call.
    """
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    return out


def leases_of(home: StockedHome, run_id: str) -> list:
    rt = home.runtime()
    try:
        return rt.ledger.find_leases(run_id=run_id)
    finally:
        rt.close()


def test_lease_is_bound_to_the_run_and_revoked_on_exit(in_task: StockedHome, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = throwaway_std_streams(monkeypatch)
    caplog.set_level(logging.INFO, logger="runlease.kfp")
    previous = signal.getsignal(signal.SIGTERM)
    with lease("dev/connections/warehouse") as conn:
        assert conn["password"] == in_task.warehouse_password
        [held] = leases_of(in_task, "run-77")
        assert held.state is LeaseState.ACTIVE and held.identity.task_id == "fetch-data"
        assert held.identity.orchestrator == "kfp" and held.identity.pipeline == "training"
        assert guard.installed and signal.getsignal(signal.SIGTERM) != previous
        print("connecting with", conn["password"])
    assert signal.getsignal(signal.SIGTERM) == previous and not guard.installed
    [done] = leases_of(in_task, "run-77")
    assert done.state is LeaseState.REVOKED and done.revoke_reason == "kfp component exited"
    assert not open_leases.ids()
    assert "leased dev/connections/warehouse v1" in caplog.text and "revoked lease" in caplog.text
    sys.stdout.flush()
    assert out.getvalue() == "connecting with ***\n"
    assert in_task.warehouse_password not in caplog.text


def test_exception_revokes_and_propagates(in_task: StockedHome, monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_std_streams(monkeypatch)
    with pytest.raises(ValueError, match="bad batch"):
        with lease("dev/tokens/experiment_tracker", kind="tokens") as token:
            assert token == in_task.tracker_token
            raise ValueError("bad batch")
    [done] = leases_of(in_task, "run-77")
    assert done.state is LeaseState.REVOKED and done.revoke_reason == "kfp component failed: ValueError"


def test_audit_trail_has_lease_and_revoke_and_no_value(in_task: StockedHome, monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_std_streams(monkeypatch)
    with lease("warehouse"):  # a bare connection id resolves in RUNLEASE_ENV (dev)
        pass
    rt = in_task.runtime()
    try:
        events = list(rt.ledger.events(AuditQuery(run_id="run-77")))
        assert rt.ledger.verify().ok
    finally:
        rt.close()
    assert [e.action for e in events] == ["lease", "revoke"]
    assert {e.task_id for e in events} == {"fetch-data"} and events[0].lease_id == events[1].lease_id
    dumped = "".join(e.model_dump_json() for e in events)
    for value in in_task.leaked_values:
        assert value not in dumped


def test_no_identity_no_lease(stocked_home: StockedHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["component"])
    with pytest.raises(RunIdentityError):
        with lease("dev/connections/warehouse"):
            pytest.fail("must not get here")
    rt = stocked_home.runtime()
    try:
        assert rt.ledger.find_leases() == []
    finally:
        rt.close()


def test_unknown_path_and_policy_denial_leave_nothing_active(in_task: StockedHome, monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_std_streams(monkeypatch)
    with pytest.raises(SecretNotFoundError):
        with lease("dev/connections/nope"):
            pass
    (in_task.settings.home / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["kfp:other-pipeline"]\nenvironments = ["dev"]\n'
        'paths = ["connections/*"]\ncapabilities = ["lease"]\n'
    )
    with pytest.raises(AccessDeniedError):
        with lease("dev/connections/warehouse"):
            pass
    assert leases_of(in_task, "run-77") == []
    assert not guard.installed


def test_lease_already_revoked_elsewhere_exits_quietly(in_task: StockedHome, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancelled run's exit task may revoke while the step is still inside its block."""
    throwaway_std_streams(monkeypatch)
    with lease("dev/connections/warehouse"):
        [held] = leases_of(in_task, "run-77")
        rt = in_task.runtime()
        try:
            assert rt.broker.revoke_run("run-77", "kfp run ended (exit handler)") == 1
        finally:
            rt.close()
    [done] = leases_of(in_task, "run-77")
    assert done.lease_id == held.lease_id and done.revoke_reason == "kfp run ended (exit handler)"
    assert not open_leases.ids()


def forget_open_leases() -> None:
    """Leases of a broken temp store: keep this test process's atexit backstop from retrying them."""
    for lease_id in open_leases.ids():
        open_leases.discard(lease_id)


def break_the_ledger(home: StockedHome) -> None:
    """Make every later revoke fail for real: the leases table is gone (a store broken mid-task)."""
    conn = sqlite3.connect(home.settings.store_file)
    try:
        conn.execute("DROP TABLE leases")
        conn.commit()
    finally:
        conn.close()


def test_failed_revocation_fails_the_step_without_the_value(in_task: StockedHome,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_std_streams(monkeypatch)
    with pytest.raises(RevocationError, match="could not revoke lease rl[0-9a-f]+ of dev/connections/warehouse") as err:
        with lease("dev/connections/warehouse") as conn:
            password = conn["password"]
            break_the_ledger(in_task)
    assert password not in str(err.value)
    assert open_leases.ids()  # still listed: the atexit backstop tries again
    forget_open_leases()


def test_failed_revocation_does_not_hide_the_steps_own_error(in_task: StockedHome,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    throwaway_std_streams(monkeypatch)
    with pytest.raises(KeyError):
        with lease("dev/connections/warehouse"):
            break_the_ledger(in_task)
            raise KeyError("missing column")
    forget_open_leases()
