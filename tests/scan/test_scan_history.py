"""--git-history: a credential added in one commit and removed in the next."""

from __future__ import annotations

import json
from pathlib import Path

from scan_support import commit_all
from scan_corpus import Fakes


def test_history_finds_a_secret_that_was_removed(git_repo: Path, run_scan) -> None:
    fk = Fakes(5)
    key_id, secret = fk.aws_key_id(), fk.aws_secret()
    dag = git_repo / "dags" / "load.py"
    dag.parent.mkdir()
    dag.write_text('import os\n\nBUCKET = "raw"\n')
    commit_all(git_repo, "add dag")
    dag.write_text(
        'import os\n\nBUCKET = "raw"\n'
        f'AWS_ACCESS_KEY_ID = "{key_id}"\n'
        f'AWS_SECRET_ACCESS_KEY = "{secret}"\n'
    )
    leaked = commit_all(git_repo, "oops")
    dag.write_text('import os\n\nBUCKET = "raw"\nAWS_ACCESS_KEY_ID = os.environ["AWS_ACCESS_KEY_ID"]\n')
    commit_all(git_repo, "remove key")

    assert run_scan(cwd=git_repo).returncode == 0  # the work tree is clean now
    proc = run_scan("--git-history", "--format", "json", cwd=git_repo)
    assert proc.returncode == 1, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    assert {(f["commit"], f["path"], f["line"], f["rule_id"]) for f in findings} == {
        (leaked, "dags/load.py", 4, "aws-access-key-id"),
        (leaked, "dags/load.py", 5, "aws-secret-access-key"),
    }
    assert key_id not in proc.stdout and secret not in proc.stdout
    table = run_scan("--git-history", cwd=git_repo)
    assert f"{leaked[:12]}:dags/load.py:5" in table.stdout


def test_history_uses_the_ast_on_lines_added_inside_an_existing_call(git_repo: Path, run_scan) -> None:
    pw = Fakes(6).password()
    dag = git_repo / "dag.py"
    dag.write_text('from airflow.models import Connection\nc = Connection(\n    conn_id="w",\n)\n')
    commit_all(git_repo, "conn")
    dag.write_text(
        'from airflow.models import Connection\nc = Connection(\n    conn_id="w",\n'
        f'    password="{pw}",\n)\n'
    )
    added = commit_all(git_repo, "add password")
    proc = run_scan("--git-history", "--format", "json", cwd=git_repo)
    findings = json.loads(proc.stdout)["findings"]
    assert [(f["commit"], f["line"], f["rule_id"]) for f in findings] == [
        (added, 4, "airflow-connection-password")
    ]
