"""``runlease import`` from files written by Airflow's own CLI (tests/unit/fixtures/airflow_export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.migrate.sources import read_source
from runlease.runtime import open_runtime
from runlease.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "airflow_export"
# The fake values the fixture files were produced with (see the fixtures' README).
WAREHOUSE_PW = "FakeExportPw/42@x"  # runlease: allow secret-assignment
REGISTRY_PW = "FakeRegistryTok77"  # runlease: allow secret-assignment
EXTRA_KEY = "FakeExtraKey88"
VAR_TOKEN = "FakeVarToken99"
VALUES = [WAREHOUSE_PW, "FakeExportPw%2F42%40x", REGISTRY_PW, EXTRA_KEY, VAR_TOKEN]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(h))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    for name in [n for n in __import__("os").environ if n.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        monkeypatch.delenv(name)
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    return h


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def assert_no_value(text: str) -> None:
    for value in VALUES:
        assert value not in text


def stored(home: Path, path: str) -> object:
    rt = open_runtime(Settings(home=home))
    try:
        return rt.store.get(rt.broker.path(path, path.split("/")[1])).value
    finally:
        rt.close()


EXPECTED_WAREHOUSE = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": WAREHOUSE_PW,
                      "schema": "analytics", "port": 5432, "extra": {"sslmode": "require"}}
EXPECTED_REGISTRY = {"conn_type": "http", "host": "registry.internal", "login": "publisher",
                     "password": REGISTRY_PW, "schema": None, "port": None,
                     "extra": {"api_key": EXTRA_KEY, "timeout": 5}}


@pytest.mark.parametrize("name", ["connections.json", "connections.yaml", "connections.env", "connections_json.env"])
def test_connection_exports_import_the_same_connections(home: Path, name: str) -> None:
    code, out = run("import", str(FIXTURES / name), "--env", "prod", "--format", "json")
    assert code == 0, out
    assert_no_value(out)
    report = {r["name"]: r for r in json.loads(out)}
    assert {r["status"] for r in report.values()} == {"imported"}
    assert report["warehouse"]["path"] == "prod/connections/warehouse"
    assert stored(home, "prod/connections/warehouse") == EXPECTED_WAREHOUSE
    assert stored(home, "prod/connections/model_registry") == EXPECTED_REGISTRY


def test_variables_export(home: Path) -> None:
    code, out = run("import", str(FIXTURES / "variables.json"), "--env", "prod")
    assert code == 0, out
    assert_no_value(out)
    assert "3 imported" in out
    assert stored(home, "prod/variables/api_token") == VAR_TOKEN
    assert stored(home, "prod/variables/feature_flag") == "on"
    assert json.loads(str(stored(home, "prod/variables/settings_json"))) == {"retries": 3, "region": "eu"}


def test_existing_secrets_are_skipped_then_overwritten_with_cas(home: Path) -> None:
    source = str(FIXTURES / "connections.json")
    assert run("import", source, "--env", "prod")[0] == 0
    code, out = run("import", source, "--env", "prod", "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["status"] for r in rows} == {"skipped"} and all("exists" in r["detail"] for r in rows)
    code, out = run("import", source, "--env", "prod", "--overwrite", "--dry-run", "--format", "json")
    assert code == 0 and {(r["status"], r["version"]) for r in json.loads(out)} == {("would overwrite", 1)}
    code, out = run("import", source, "--env", "prod", "--overwrite", "--format", "json")
    assert code == 0 and {r["status"] for r in json.loads(out)} == {"overwritten"}
    assert {r["version"] for r in json.loads(out)} == {2}
    code, out = run("history", "prod/connections/warehouse", "--format", "json")
    assert sorted(v["version"] for v in json.loads(out)) == [1, 2]


def test_overwrite_is_check_and_set_against_the_version_seen(home: Path) -> None:
    """CURRENT moving between the check and the write fails that entry instead of replacing the newer value."""
    from runlease.migrate import importer

    source = str(FIXTURES / "connections.json")
    assert run("import", source, "--env", "prod")[0] == 0
    rt = open_runtime(Settings(home=home))
    try:
        candidates = read_source(source)
        real_resolve = rt.broker.store.resolve
        from runlease.cli.common import cli_identity

        who = cli_identity("import")

        def resolve_then_someone_writes(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen = real_resolve(path, *args, **kwargs)
            rt.broker.put(path, {"conn_type": "http", "host": "newer"}, who, kind="connections")
            return seen

        rt.broker.store.resolve = resolve_then_someone_writes  # type: ignore[method-assign]
        outcomes = importer.import_all(rt.broker, "prod", candidates, who, overwrite=True)
        rt.broker.store.resolve = real_resolve  # type: ignore[method-assign]
        assert {o.status for o in outcomes} == {"failed"}
        assert all("changed during the import" in o.detail for o in outcomes)
        assert rt.store.get(rt.broker.path("prod/connections/warehouse", "connections")).value["host"] == "newer"
    finally:
        rt.close()


def test_dry_run_writes_nothing(home: Path) -> None:
    code, out = run("import", str(FIXTURES / "connections.yaml"), "--env", "prod", "--dry-run", "--format", "json")
    assert code == 0, out
    assert {r["status"] for r in json.loads(out)} == {"would import"}
    code, out = run("ls", "--format", "json")
    assert json.loads(out) == []
    code, out = run("audit", "show", "--format", "json")
    assert [e for e in json.loads(out) if e["action"] == "write"] == []


def test_environment_and_dotenv(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", f"postgres://etl:{REGISTRY_PW}@db:5432/x")
    monkeypatch.setenv("AIRFLOW_VAR_API_TOKEN", VAR_TOKEN)
    code, out = run("import", "env:", "--env", "dev")
    assert code == 0, out
    assert_no_value(out)
    assert stored(home, "dev/connections/warehouse")["password"] == REGISTRY_PW  # type: ignore[index]
    assert stored(home, "dev/variables/api_token") == VAR_TOKEN

    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# app settings\n"
        f"export AIRFLOW_CONN_REPORTING='mysql://rep:{REGISTRY_PW}@rep.internal/reports'\n"
        f'AIRFLOW_VAR_SLACK_TOKEN="{VAR_TOKEN}"\n'
        f"UNRELATED_PASSWORD={EXTRA_KEY}\n"
    )
    code, out = run("import", str(dotenv), "--env", "dev", "--format", "json")
    assert code == 0, out
    assert_no_value(out)
    report = {r["name"]: r for r in json.loads(out)}
    assert report["reporting"]["status"] == "imported" and report["slack_token"]["status"] == "imported"
    assert report["UNRELATED_PASSWORD"]["status"] == "skipped"
    assert stored(home, "dev/connections/reporting")["password"] == REGISTRY_PW  # type: ignore[index]


def test_bad_entries_fail_alone_and_never_echo_values(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "conns.json"
    bad.write_text(json.dumps({
        "good": {"conn_type": "http", "host": "h", "password": REGISTRY_PW},
        "bad_port": {"conn_type": "postgres", "host": "h", "password": WAREHOUSE_PW, "port": "x" + VAR_TOKEN},
        "bad extra": {"conn_type": "http", "password": EXTRA_KEY, "extra": "{not json " + EXTRA_KEY},
    }))
    code, out = run("import", str(bad), "--env", "dev", "--format", "json")
    assert code == 1, out
    assert_no_value(out)
    report = {r["name"]: r for r in json.loads(out)}
    assert report["good"]["status"] == "imported"
    assert report["bad_port"]["status"] == "failed" and "port" in report["bad_port"]["detail"]
    assert report["bad extra"]["status"] == "failed"


def test_unparseable_files_write_nothing_and_quote_nothing(home: Path, tmp_path: Path) -> None:
    yaml_file = tmp_path / "conns.yaml"
    yaml_file.write_text(f"warehouse:\n  password: {WAREHOUSE_PW}\n   bad: [unclosed {REGISTRY_PW}\n")
    code, out = run("import", str(yaml_file), "--env", "dev")
    assert code == 2, out
    assert "line" in out
    assert_no_value(out)
    json_file = tmp_path / "conns.json"
    json_file.write_text('{"warehouse": {"password": "' + WAREHOUSE_PW + '",}')
    code, out = run("import", str(json_file), "--env", "dev")
    assert code == 2 and "not valid JSON" in out
    assert_no_value(out)
    assert json.loads(run("ls", "--format", "json")[1]) == []
    code, out = run("import", str(tmp_path / "missing.json"), "--env", "dev")
    assert code == 4
    unknown = tmp_path / "conns.txt"
    shutil.copy(FIXTURES / "connections.json", unknown)
    code, out = run("import", str(unknown), "--env", "dev")
    assert code == 2 and "--source-format" in out
    code, out = run("import", str(unknown), "--env", "dev", "--source-format", "json")
    assert code == 0, out
    code, out = run("import", "vault:secret/airflow", "--env", "dev")  # vault: takes an address, not a path
    assert code == 2 and "--mount" not in out and "address" in out
    code, out = run("import", "ssm:/airflow", "--env", "dev")
    assert code == 2 and "SSM" in out
    code, out = run("import", str(unknown), "--env", "dev", "--source-format", "json", "--mount", "secret")
    assert code == 2 and "--mount" in out  # a Vault option on a file source is bad input, not ignored


def test_policy_applies_to_imports(home: Path) -> None:
    (home / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["cli"]\nenvironments = ["dev"]\npaths = ["*"]\ncapabilities = ["admin"]\n'
    )
    code, out = run("import", str(FIXTURES / "connections.json"), "--env", "prod", "--format", "json")
    assert code == 1
    assert {r["status"] for r in json.loads(out)} == {"failed"}
    assert all("denied" in r["detail"].lower() for r in json.loads(out))


def _run_on(tty: bool, args: list[str], env: dict[str, str]) -> str:
    import os
    import pty
    import subprocess
    import sys

    if not tty:
        proc = subprocess.run([sys.executable, "-m", "runlease", *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runlease", *args], env=env, stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(home: Path, tmp_path: Path) -> None:
    import os

    many = tmp_path / "variables.json"
    many.write_text(json.dumps({f"var_{i:03d}": f"{VAR_TOKEN}-{i}" for i in range(40)}))
    env = {**os.environ, "RUNLEASE_HOME": str(home), "COLUMNS": "120", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    on_tty = _run_on(True, ["import", str(many), "--env", "tty"], env)
    assert "importing" in on_tty and "40 imported" in on_tty
    piped = _run_on(False, ["import", str(many), "--env", "pipe"], env)
    assert "importing" not in piped and "40 imported" in piped
    for text in (on_tty, piped):
        assert VAR_TOKEN not in text
