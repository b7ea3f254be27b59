"""The runlease CLI end to end on a temporary home: exit codes, masking, one-line errors."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app

PASSWORD = "Cli-Pa55word-that-must-not-leak"  # runlease: allow secret-assignment (test fixture)
URI = f"postgres://etl:{PASSWORD}@warehouse.internal:5432/analytics?sslmode=require"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(h))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return h


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    text = result.output
    try:  # newer runners already interleave stderr into output; older ones keep it apart
        err = result.stderr
    except ValueError:
        err = ""
    if err and err not in text:
        text += err
    return result.exit_code, text


@pytest.fixture()
def stocked(home: Path) -> Path:
    assert run("init")[0] == 0
    code, out = run("put", "dev/connections/warehouse", "--stdin", input=URI)
    assert code == 0, out
    return home


def test_init_creates_private_home_and_key(home: Path) -> None:
    code, out = run("init")
    assert code == 0, out
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "master.key").stat().st_mode) == 0o600
    assert (home / "store.db").exists() and (home / "policy.example.toml").exists()
    code, out = run("init")
    assert code == 0 and "already initialized" in out


def test_get_masks_unless_reveal_and_audits_both(stocked: Path) -> None:
    code, out = run("get", "dev/connections/warehouse")
    assert code == 0 and PASSWORD not in out and "***" in out and "warehouse.internal" in out
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI
    code, out = run("audit", "export")
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    reads = [e for e in events if e["action"] == "read"]
    assert [r["detail"]["revealed"] for r in reads] == [False, True]
    assert PASSWORD not in out


def test_value_never_from_argv(stocked: Path) -> None:
    code, out = run("put", "dev/variables/x", "value-in-argv")
    assert code == 2


def test_variables_are_text_and_empty_values_are_refused(stocked: Path) -> None:
    assert run("put", "dev/variables/model_bucket", "--stdin", input="s3://models/prod\n")[0] == 0
    code, out = run("get", "dev/variables/model_bucket", "--reveal")
    assert code == 0 and out == "s3://models/prod\n"
    code, out = run("put", "dev/variables/empty", "--stdin", input="")
    assert code == 2 and "empty value" in out


def test_bad_path_and_bad_uri_give_one_clear_line(stocked: Path) -> None:
    code, out = run("get", "prod/conns/warehouse")
    assert code == 2
    assert out.strip().startswith("error: invalid secret path kind 'conns'")
    assert len(out.strip().splitlines()) == 1
    bad = f"postgres://etl:{PASSWORD}@db:99999/x"
    code, out = run("put", "dev/connections/broken", "--stdin", input=bad)
    assert code == 2 and "port" in out and PASSWORD not in out
    assert run("history", "dev/connections/broken")[0] == 4  # nothing was written


def test_check_and_set_conflict(stocked: Path) -> None:
    code, out = run("put", "dev/connections/warehouse", "--stdin", "--cas", "0", input=URI)
    assert code == 5 and "check-and-set" in out
    code, out = run("put", "dev/connections/warehouse", "--stdin", "--cas", "1", input=URI)
    assert code == 0 and "version 2" in out
    code, out = run("history", "dev/connections/warehouse")
    assert "PREVIOUS" in out and "CURRENT" in out


def test_lease_list_and_revoke(stocked: Path) -> None:
    code, out = run("lease", "dev/connections/warehouse", "--run-id", "run-7", "--pipeline", "training",
                    "--task-id", "train", "--try-number", "2", "--orchestrator", "airflow")
    assert code == 0 and PASSWORD not in out and "run-7" in out
    lease_id = next(tok for tok in out.split() if tok.startswith("rl") and len(tok) == 26)
    code, out = run("leases", "--run-id", "run-7", "--state", "active")
    assert lease_id in out
    assert run("revoke", lease_id, "--run-id", "run-7")[0] == 2
    code, out = run("revoke", lease_id)
    assert code == 0 and f"revoked {lease_id}" in out
    code, out = run("revoke", lease_id)
    assert code == 0 and "not active" in out
    code, out = run("audit", "show", "--run-id", "run-7")
    assert "lease" in out and "revoke" in out and "train" in out
    assert run("revoke", "rl-does-not-exist")[0] == 4


def test_audit_verify_detects_edit(stocked: Path) -> None:
    code, out = run("audit", "verify")
    assert code == 0 and "audit chain OK" in out
    conn = sqlite3.connect(stocked / "store.db")
    conn.execute("UPDATE audit SET path='dev/connections/other' WHERE seq=1")
    conn.commit()
    conn.close()
    code, out = run("audit", "verify")
    assert code == 7 and "seq 1" in out
    code, out = run("doctor")
    assert code == 1 and "FAIL" in out


def test_wrong_master_key_is_refused(stocked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    code, out = run("ls")
    assert code == 3 and "does not match" in out
    code, out = run("put", "dev/variables/y", "--stdin", input="some-value-123")
    assert code == 3


def test_key_rotate_and_doctor(stocked: Path) -> None:
    code, out = run("key", "rotate")
    assert code == 0 and "re-wrapped 1 data key" in out
    doc = json.loads((stocked / "master.key").read_text())
    assert len(doc["keys"]) == 2
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert out.strip() == URI
    code, out = run("doctor")
    assert code == 0, out
    assert "audit chain OK" in out


def test_policy_denial_is_audited_with_exit_6(stocked: Path) -> None:
    (stocked / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["cli"]\nenvironments = ["dev"]\npaths = ["*"]\ncapabilities = ["admin"]\n'
    )
    code, out = run("lease", "dev/connections/warehouse", "--orchestrator", "airflow", "--pipeline", "etl")
    assert code == 6 and "not granted 'lease'" in out
    code, out = run("audit", "export", "--action", "lease")
    denied = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert denied and denied[-1]["outcome"] == "denied" and denied[-1]["pipeline"] == "etl"
    code, out = run("get", "prod/connections/warehouse")
    assert code == 6


def test_export_to_file_and_delete(stocked: Path, tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    assert run("audit", "export", "-o", str(target))[0] == 0
    assert all(json.loads(line)["chain"] for line in target.read_text().splitlines())
    assert run("delete", "dev/connections/warehouse", "--yes")[0] == 0
    assert run("get", "dev/connections/warehouse")[0] == 4
    code, out = run("ls", "--all")
    assert "deleted" in out


def test_console_script_runs_as_module(stocked: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "runlease", "get", "nope"], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: invalid secret path")
