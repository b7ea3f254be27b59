"""Scriptable CLI output: --format table|json|jsonl, unwrapped tables when piped, escaped user text, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from runlease.cli.main import app

PASSWORD = "Out-Pa55word-never-printed"  # runlease: allow secret-assignment (test fixture)
URI = f"postgres://etl:{PASSWORD}@warehouse.internal:5432/analytics"
LONG_RUN = "scheduled__2026-01-01T00:00:00+00:00-" + "x" * 60
MARKUP_RUN = "evil[/]"
MARKUP_TASK = "[bold red]x"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(h))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: must not matter when piped
    return h


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.output


@pytest.fixture()
def stocked(home: Path) -> Path:
    assert run("init")[0] == 0
    code, out = run("put", "dev/connections/warehouse", "--stdin", input=URI)
    assert code == 0, out
    for run_id, task_id in ((LONG_RUN, "load_a_very_long_task_identifier_that_would_wrap"),
                            (MARKUP_RUN, MARKUP_TASK)):
        code, out = run("lease", "dev/connections/warehouse", "--pipeline", "dag_x", "--run-id", run_id,
                        "--task-id", task_id, "--try-number", "1")
        assert code == 0, out
        assert PASSWORD not in out
    return home


def test_piped_table_keeps_every_id_on_one_line(stocked: Path) -> None:
    code, out = run("audit", "show", "--run-id", LONG_RUN)
    assert code == 0, out
    lines = [line for line in out.splitlines() if LONG_RUN in line and "audit trail of run" not in line]
    assert lines, out
    assert all("load_a_very_long_task_identifier_that_would_wrap" in line for line in lines)
    code, out = run("leases", "--run-id", LONG_RUN)
    assert code == 0 and any(LONG_RUN in line and "dev/connections/warehouse" in line for line in out.splitlines())


def test_rich_markup_in_ids_neither_crashes_nor_styles(stocked: Path) -> None:
    for args in (("audit", "show", "--run-id", MARKUP_RUN), ("leases", "--run-id", MARKUP_RUN),
                 ("audit", "show"), ("leases",)):
        code, out = run(*args)
        assert code == 0, out
        assert MARKUP_RUN in out and MARKUP_TASK in out, out
        assert "\x1b[" not in out
    code, out = run("revoke", "--run-id", MARKUP_RUN)
    assert code == 0 and f"of run {MARKUP_RUN}" in out, out


def test_markup_is_not_interpreted_on_a_terminal(stocked: Path) -> None:
    """On a colour terminal the same ids print literally (a style tag would vanish into escape codes)."""
    script = (
        "import sys; from rich.console import Console; import runlease.cli.common as c;"
        "c.console = Console(force_terminal=True, width=300, highlight=False);"
        "import runlease.cli.output as o; o.console = c.console;"
        "from runlease.cli.main import app; sys.argv=['runlease','leases','--run-id',sys.argv[1]]; app()"
    )
    proc = subprocess.run([sys.executable, "-c", script, MARKUP_RUN], capture_output=True, text=True,
                          env={**os.environ}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert MARKUP_RUN in proc.stdout and MARKUP_TASK in proc.stdout
    assert "\x1b[1;31mx" not in proc.stdout  # "[bold red]x" was not applied as a style


def test_json_and_jsonl_listings(stocked: Path) -> None:
    code, out = run("leases", "--format", "json")
    assert code == 0, out
    leases = json.loads(out)
    assert {lease["run_id"] for lease in leases} == {LONG_RUN, MARKUP_RUN}
    assert {"lease_id", "path", "version", "issuer", "issued_at", "expires_at", "state"} <= set(leases[0])
    code, out = run("audit", "show", "--format", "jsonl")
    assert code == 0, out
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events) and len(events) >= 3
    assert {e["action"] for e in events} >= {"write", "lease"}
    code, out = run("ls", "--format", "json")
    assert code == 0 and json.loads(out)[0]["path"] == "dev/connections/warehouse"
    code, out = run("history", "dev/connections/warehouse", "--format", "jsonl")
    assert code == 0 and json.loads(out.splitlines()[0])["stages"] == ["CURRENT"]
    code, out = run("doctor", "--format", "json")
    assert code == 0 and all(check["ok"] for check in json.loads(out))
    for listing in (("leases",), ("audit", "show"), ("ls",), ("history", "dev/connections/warehouse")):
        for fmt in ("json", "jsonl", "table"):
            code, out = run(*listing, "--format", fmt)
            assert code == 0 and PASSWORD not in out


def test_rotation_status_json(stocked: Path) -> None:
    code, out = run("put", "dev/tokens/api", "--stdin", input="tok-value-1234567890")
    assert code == 0, out
    code, out = run("rotation", "set", "dev/tokens/api", "--rotator", "token", "--interval", "30d", "--owner",
                    "[red]team")
    assert code == 0, out
    code, out = run("rotation", "status", "--format", "json")
    assert code == 0, out
    (row,) = json.loads(out)
    assert row["path"] == "dev/tokens/api" and row["owner"] == "[red]team" and row["due"] is False
    assert row["interval_s"] == 30 * 86400 and row["last_result"] == "never rotated"
    code, out = run("rotation", "status")
    assert code == 0 and "[red]team" in out


def test_bad_format_is_bad_input(stocked: Path) -> None:
    code, out = run("leases", "--format", "xml")
    assert code == 2


def test_every_option_and_argument_has_help() -> None:
    missing: list[str] = []

    def walk(command: Any, name: str) -> None:
        if hasattr(command, "commands"):  # a group (typer may bundle its own click)
            for sub_name, sub in command.commands.items():
                walk(sub, f"{name} {sub_name}")
            return
        for param in command.params:
            checked.append(f"{name} {param.name}")
            if not getattr(param, "help", None) and param.name != "help":
                missing.append(f"{name} {param.name}")

    checked: list[str] = []
    walk(typer.main.get_command(app), "runlease")
    assert not missing, missing
    assert "runlease audit show fmt" in checked and "runlease rotation status fmt" in checked


def test_every_listing_takes_format() -> None:
    root: Any = typer.main.get_command(app)
    listings = [("leases",), ("ls",), ("history",), ("rotation", "status"), ("audit", "show"), ("doctor",),
                ("import",)]
    for names in listings:
        command = root
        for name in names:
            command = command.commands[name]
        assert "--format" in [opt for p in command.params for opt in getattr(p, "opts", [])], names


def test_a_reader_that_stops_early_is_not_an_error(home: Path, tmp_path: Path) -> None:
    """``runlease audit show --format jsonl | head -1``: exit 0, nothing on stderr."""
    assert run("init")[0] == 0
    many = tmp_path / "variables.json"
    many.write_text(json.dumps({f"v{i:04d}": f"value-{i}-0123456789" for i in range(1500)}))
    assert run("import", str(many), "--env", "dev", "--format", "json")[0] == 0
    for fmt in ("jsonl", "table"):
        proc = subprocess.Popen([sys.executable, "-m", "runlease", "audit", "show", "--format", fmt],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, err
        assert first and err == b""


def test_audit_show_says_which_identities_were_verified(stocked: Path) -> None:
    """The audit shows claimed vs verified: CLI leases are claims; a proven identity names its proof."""
    from runlease.models import RunIdentity, Verification
    from runlease.runtime import open_runtime
    from runlease.settings import Settings

    rt = open_runtime(Settings(home=stocked))
    try:
        proof = Verification(method="oidc", subject="system:serviceaccount:ml:pipeline-a", issuer="https://k8s")
        rt.broker.lease("dev/connections/warehouse",
                        RunIdentity(orchestrator="kfp", pipeline="p", run_id="run-v", verification=proof), 60)
    finally:
        rt.close()
    code, out = run("audit", "show", "--run-id", "run-v")
    assert code == 0 and "oidc:system:serviceaccount:ml:pipeline-a" in out, out
    code, out = run("audit", "show", "--run-id", LONG_RUN)
    assert code == 0 and "claimed" in out, out
