"""One tampered row does not blind a listing, and a rotation that hits one audits it as tampering.

The attacker edits or inserts rows with plain sqlite3 (no key). Before,
``ls``/``history``/``leases`` failed as a whole on the first bad row, so a
single forged INSERT hid every genuine row from operators. Now the genuine
rows are listed, the bad one is marked TAMPERED (named, never a value), the
tampering is audited, and the command still exits 7.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.errors import IntegrityError
from runlease.ledger.base import AuditQuery
from runlease.models import AuditEvent, RunIdentity, SecretPath, Stage, utcnow
from runlease.rotation import RotationEngine
from runlease.rotation.policy import RotationPolicy
from runlease.runtime import Runtime

A = SecretPath.parse("dev/tokens/alpha")
B = SecretPath.parse("dev/tokens/bravo")
VALUE_A = "alpha-token-value-1"  # runlease: allow secret-assignment (test fixture)
VALUE_B = "bravo-token-value-1"  # runlease: allow secret-assignment (test fixture)


@pytest.fixture()
def cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNLEASE_HOME", str(runtime.settings.home))
    monkeypatch.setenv("COLUMNS", "250")  # Rich reads the width from here: no cell is shortened

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), terminal_width=250)
        return result.exit_code, result.output

    return run


def raw(rt: Runtime) -> sqlite3.Connection:
    return sqlite3.connect(rt.settings.store_file, isolation_level=None)


def errors(rt: Runtime, action: str) -> list[AuditEvent]:
    return [e for e in rt.ledger.events(AuditQuery(action=action)) if e.outcome.value == "error"]


def test_ls_lists_the_genuine_secrets_and_marks_the_tampered_one(runtime: Runtime, admin: RunIdentity, cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(A, VALUE_A, admin, kind="tokens")
    runtime.broker.put(B, VALUE_B, admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE secrets SET metadata='{\"issuer\": \"static\"}' WHERE path=?", (str(B),))
    code, out = cli("ls")
    assert code == 7, out
    alpha = next(line for line in out.splitlines() if str(A) in line)
    bravo = next(line for line in out.splitlines() if str(B) in line and "TAMPERED" in line)
    assert "live" in alpha and "live" not in bravo
    assert "failed authentication" in out and "secrets dev/tokens/bravo" in out
    assert VALUE_A not in out and VALUE_B not in out
    [event] = errors(runtime, "list")
    assert event.detail["table"] == "secrets" and event.path == str(B)
    assert runtime.ledger.verify().ok


def test_history_marks_a_tampered_version_and_a_tampered_secret_row(runtime: Runtime, admin: RunIdentity,
                                                                    cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(A, VALUE_A, admin, kind="tokens")
    runtime.broker.put(A, "alpha-token-value-2", admin, kind="tokens")
    with raw(runtime) as db:
        db.execute("UPDATE versions SET deprecated=1 WHERE path=? AND version=1", (str(A),))
    code, out = cli("history", str(A))
    assert code == 7, out
    lines = out.splitlines()
    assert any(line.strip("│ ").startswith("2 ") and "CURRENT" in line for line in lines), out
    assert any(line.strip("│ ").startswith("1 ") and "TAMPERED" in line for line in lines), out
    assert "versions dev/tokens/alpha v1" in out
    with raw(runtime) as db:
        db.execute("UPDATE stages SET version=1 WHERE path=? AND stage='CURRENT'", (str(A),))
    code, out = cli("history", str(A))
    assert code == 7 and "stage labels unknown" in out and "secrets dev/tokens/alpha" in out, out
    assert "CURRENT" not in out.split("TAMPERED")[0]  # no label is shown from a row that failed
    assert sorted(e.detail["table"] for e in errors(runtime, "history")) == ["secrets", "versions", "versions"]


def test_leases_lists_genuine_leases_and_marks_a_forged_one(runtime: Runtime, identity: RunIdentity,
                                                            admin: RunIdentity, cli) -> None:  # type: ignore[no-untyped-def]
    runtime.broker.put(A, VALUE_A, admin, kind="tokens")
    genuine = runtime.broker.lease(A, identity, kind="tokens")
    forged_id = "rl[bold red]forged[/]0000000000"  # Rich markup in a forged id is shown, never interpreted
    past = (utcnow() - timedelta(hours=1)).isoformat()
    with raw(runtime) as db:
        db.execute(
            "INSERT INTO leases(lease_id, path, version, stage, issuer, orchestrator, pipeline, run_id, issued_at, "
            "expires_at, state, issuer_state) VALUES (?, ?, 1, 'CURRENT', 'postgres', 'airflow', 'evil', 'r', ?, ?, "
            "'active', '{\"role\": \"victim\"}')", (forged_id, str(A), past, past))
    code, out = cli("leases")
    assert code == 7, out
    assert any(genuine.lease_id in line and "active" in line for line in out.splitlines())
    assert any(forged_id[:12] in line and "TAMPERED" in line for line in out.splitlines()), out
    assert VALUE_A not in out
    [event] = errors(runtime, "list_leases")
    assert event.lease_id == forged_id and event.detail["table"] == "leases"


def _token_policy(rt: Runtime, path: SecretPath) -> None:
    policy = RotationPolicy(rotator="token", interval_s=30 * 86400, grace_s=0, owner="ml", settings={"prefix": "rk_"})
    rt.store.update_metadata(path, policy.to_metadata())


def test_a_rotation_step_that_hits_a_tampered_row_audits_tampering_and_a_rotate_error(
        runtime: Runtime, admin: RunIdentity) -> None:
    runtime.broker.put(A, "rk_" + "a" * 40, admin, kind="tokens")
    _token_policy(runtime, A)
    engine = RotationEngine(runtime.broker)
    state = engine.start(A, admin)
    with raw(runtime) as db:  # the version the create step builds on
        db.execute("UPDATE versions SET deprecated=1 WHERE path=? AND version=1", (str(A),))
    from runlease.rotation.state import Step

    with pytest.raises(IntegrityError):
        engine.run_step(A, admin, Step.CREATE, state.token)
    rotate_errors = errors(runtime, "rotate")
    assert [e.detail.get("step") for e in rotate_errors if "step" in e.detail] == ["create"]
    assert [e.detail["table"] for e in rotate_errors if e.detail.get("table")] == ["versions"]
    assert runtime.store.info(A).stages == {Stage.CURRENT: 1}  # nothing was staged


def test_a_grouped_rotation_audits_the_tampering_after_its_rollback(runtime: Runtime, admin: RunIdentity) -> None:
    """``rotate`` runs the token rotator's steps in one transaction; what an inner step audited is rolled
    back with it, so the tampering must be audited again outside."""
    runtime.broker.put(A, "rk_" + "b" * 40, admin, kind="tokens")
    _token_policy(runtime, A)
    with raw(runtime) as db:
        db.execute("UPDATE versions SET deprecated=1 WHERE path=? AND version=1", (str(A),))
    with pytest.raises(IntegrityError):
        RotationEngine(runtime.broker).rotate(A, admin)
    rotate_errors = errors(runtime, "rotate")
    # The claim (start, inside the group) reads every version row to find the high-water mark.
    assert [e.detail.get("step") for e in rotate_errors if "step" in e.detail] == ["start"]
    assert [e.detail["table"] for e in rotate_errors if e.detail.get("table")] == ["versions"]
    assert not [e for e in runtime.ledger.events(AuditQuery(action="rotate")) if e.outcome.value == "ok"]
    assert runtime.ledger.verify().ok


def test_a_rotation_that_finds_the_secret_row_tampered_audits_it(runtime: Runtime, admin: RunIdentity) -> None:
    runtime.broker.put(A, "rk_" + "c" * 40, admin, kind="tokens")
    _token_policy(runtime, A)
    with raw(runtime) as db:
        db.execute("UPDATE secrets SET metadata=replace(metadata, '\"token\"', '\"postgres\"') WHERE path=?",
                   (str(A),))
    with pytest.raises(IntegrityError):
        RotationEngine(runtime.broker).rotate(A, admin)
    rotate_errors = errors(runtime, "rotate")
    assert [e.detail.get("step") for e in rotate_errors if "step" in e.detail] == ["rotate"]
    assert [e.detail["table"] for e in rotate_errors if e.detail.get("table")] == ["secrets"]
