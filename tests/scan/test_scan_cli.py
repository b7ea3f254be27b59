"""The command line: exit codes, formats, suppressions, file selection."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from scan_support import commit_all, git
from scan_corpus import Fakes
from typer.testing import CliRunner

from runlease.scan.cli import register
from runlease.scan.rules import RULES

FK = Fakes(99)


def _dag_with_secret(pw: str) -> str:
    return f'from airflow.models import Connection\n\nc = Connection(conn_id="w", password="{pw}")\n'


def test_clean_tree_exits_0(git_repo: Path, run_scan) -> None:
    (git_repo / "dag.py").write_text('conn_id = "warehouse"\npassword = Variable.get("pw")\n')
    commit_all(git_repo, "clean")
    proc = run_scan(cwd=git_repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 finding(s)" in proc.stdout


def test_findings_exit_1_and_table_shows_location_rule_and_redaction(git_repo: Path, run_scan) -> None:
    pw = FK.password()
    (git_repo / "dag.py").write_text(_dag_with_secret(pw))
    proc = run_scan(cwd=git_repo)
    assert proc.returncode == 1
    assert "dag.py:3" in proc.stdout and "airflow-connection-password" in proc.stdout
    assert "«redacted:airflow-connection-password»" in proc.stdout
    assert pw not in proc.stdout + proc.stderr


def test_usage_errors_exit_2(git_repo: Path, tmp_path: Path, run_scan) -> None:
    assert run_scan("does-not-exist.py", cwd=git_repo).returncode == 2
    assert run_scan("--format", "xml", cwd=git_repo).returncode == 2
    outside = tmp_path / "plain"
    outside.mkdir()
    proc = run_scan(cwd=outside)
    assert proc.returncode == 2 and "not inside a git work tree" in proc.stderr
    assert run_scan("--git-history", cwd=outside).returncode == 2
    assert run_scan("--all-files", cwd=outside).returncode == 0
    (git_repo / ".runlease-baseline.json").write_text("{not json")
    assert run_scan(cwd=git_repo).returncode == 2


def test_sarif_is_2_1_0_with_rule_metadata(git_repo: Path, run_scan) -> None:
    (git_repo / "dag.py").write_text(_dag_with_secret(FK.password()))
    proc = run_scan("--format", "sarif", cwd=git_repo)
    assert proc.returncode == 1
    log = json.loads(proc.stdout)
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert {r["id"] for r in rules} == set(RULES)
    assert all(r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] for r in rules)
    (result,) = run["results"]
    assert rules[result["ruleIndex"]]["id"] == result["ruleId"] == "airflow-connection-password"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert region["startLine"] == 3
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "dag.py"
    assert result["partialFingerprints"]


def test_json_output_and_output_file(git_repo: Path, run_scan) -> None:
    (git_repo / "dag.py").write_text(_dag_with_secret(FK.password()))
    proc = run_scan("--format", "json", "--output", "report.json", cwd=git_repo)
    assert proc.returncode == 1
    data = json.loads((git_repo / "report.json").read_text())
    assert [f["rule_id"] for f in data["findings"]] == ["airflow-connection-password"]
    assert data["findings"][0]["path"] == "dag.py" and data["findings"][0]["line"] == 3


def test_inline_pragma_suppresses_only_the_named_rule(git_repo: Path, run_scan) -> None:
    pw, pw2 = FK.password(), FK.password()
    (git_repo / "a.py").write_text(f'db_password = "{pw}"  # runlease: allow secret-assignment\n')
    (git_repo / "b.py").write_text(f'db_password = "{pw2}"  # runlease: allow private-key\n')
    proc = run_scan("--format", "json", cwd=git_repo)
    data = json.loads(proc.stdout)
    assert [(f["path"], f["rule_id"]) for f in data["findings"]] == [("b.py", "secret-assignment")]
    assert data["suppressed"] == 1


def test_baseline_suppresses_known_findings_but_not_new_ones(git_repo: Path, run_scan) -> None:
    pw = FK.password()
    (git_repo / "old.py").write_text(f'\nadmin_password = "{pw}"\n')
    assert run_scan("--write-baseline", cwd=git_repo).returncode == 0
    baseline = (git_repo / ".runlease-baseline.json").read_text()
    assert pw not in baseline and "fingerprint" in baseline
    assert run_scan(cwd=git_repo).returncode == 0
    # Lines moving does not invalidate the baseline ...
    (git_repo / "old.py").write_text(f'"""doc"""\n\n\nadmin_password = "{pw}"\n')
    assert run_scan(cwd=git_repo).returncode == 0
    # ... but a new finding fails, and --no-baseline shows everything.
    (git_repo / "new.py").write_text(f'api_token = "{FK.random_key(30)}"\n')
    proc = run_scan("--format", "json", cwd=git_repo)
    assert proc.returncode == 1
    assert [f["path"] for f in json.loads(proc.stdout)["findings"]] == ["new.py"]
    assert len(json.loads(run_scan("--format", "json", "--no-baseline", cwd=git_repo).stdout)["findings"]) == 2


def test_default_mode_honours_gitignore_and_all_files_does_not(git_repo: Path, run_scan) -> None:
    (git_repo / ".gitignore").write_text("local/\n")
    (git_repo / "local").mkdir()
    (git_repo / "local" / "settings.py").write_text(f'api_token = "{FK.random_key(30)}"\n')
    assert run_scan(cwd=git_repo).returncode == 0
    proc = run_scan("--all-files", "--format", "json", cwd=git_repo)
    assert [f["path"] for f in json.loads(proc.stdout)["findings"]] == ["local/settings.py"]


def test_dotenv_flagged_when_tracked_not_when_ignored(git_repo: Path, run_scan) -> None:
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("DB_HOST=localhost\n")
    commit_all(git_repo, "ignored env")
    assert run_scan(cwd=git_repo).returncode == 0
    assert run_scan("--all-files", cwd=git_repo).returncode == 0  # present but not tracked
    (git_repo / ".gitignore").write_text("")
    git(git_repo, "add", ".env")  # staged is what pre-commit sees: counts as tracked
    proc = run_scan(".env", "--format", "json", cwd=git_repo)
    assert [f["rule_id"] for f in json.loads(proc.stdout)["findings"]] == ["dotenv-file"]


def test_explicit_paths_like_pre_commit(git_repo: Path, run_scan) -> None:
    (git_repo / "a.py").write_text(f'password = "{FK.password()}"\n')
    (git_repo / "b.py").write_text("x = 1\n")
    assert run_scan("b.py", cwd=git_repo).returncode == 0
    assert run_scan("a.py", "b.py", cwd=git_repo).returncode == 1


def test_register_adds_scan_to_a_multi_command_app(git_repo: Path, monkeypatch) -> None:
    app = typer.Typer()

    @app.command()
    def version() -> None:
        typer.echo("0")

    register(app)
    (git_repo / "a.py").write_text(f'api_token = "{FK.random_key(30)}"\n')
    monkeypatch.chdir(git_repo)
    result = CliRunner().invoke(app, ["scan", "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["findings"][0]["rule_id"] == "high-entropy-secret"
    assert CliRunner().invoke(app, ["scan", "--format", "nope"]).exit_code == 2


def test_jobs_gives_the_same_findings(git_repo: Path, run_scan) -> None:
    for i in range(80):
        body = f'api_token = "{FK.random_key(30)}"\n' if i % 10 == 0 else f"x = {i}\n"
        (git_repo / f"m{i}.py").write_text(body)
    one = json.loads(run_scan("--format", "json", cwd=git_repo).stdout)["findings"]
    two = json.loads(run_scan("--format", "json", "--jobs", "2", cwd=git_repo).stdout)["findings"]
    assert sorted(f["fingerprint"] for f in one) == sorted(f["fingerprint"] for f in two)
    assert len(one) == 8


def test_pre_commit_hook_definition_and_docs_cover_every_rule() -> None:
    from scan_support import REPO_ROOT

    hooks = (REPO_ROOT / ".pre-commit-hooks.yaml").read_text()
    for expected in ("- id: runlease-scan", "entry: runlease scan", "language: python", "pass_filenames: true"):
        assert expected in hooks
    docs = (REPO_ROOT / "docs" / "scanning.md").read_text()
    for rule_id in RULES:
        assert f"| `{rule_id}` |" in docs, f"docs/scanning.md lacks rule {rule_id}"


def test_output_into_a_missing_folder_creates_it(git_repo: Path, run_scan) -> None:
    (git_repo / "dag.py").write_text(_dag_with_secret(FK.password()))
    proc = run_scan("--format", "sarif", "-o", "reports/ci/runlease.sarif", cwd=git_repo)
    assert proc.returncode == 1, proc.stderr
    assert json.loads((git_repo / "reports" / "ci" / "runlease.sarif").read_text())["version"] == "2.1.0"


def test_output_that_cannot_be_written_is_a_usage_error_not_a_traceback(git_repo: Path, run_scan) -> None:
    (git_repo / "dag.py").write_text('x = 1\n')
    (git_repo / "afile").write_text("a file, not a folder\n")
    proc = run_scan("--format", "json", "-o", "afile/report.json", cwd=git_repo)
    assert proc.returncode == 2
    assert "cannot write the report to afile/report.json" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
