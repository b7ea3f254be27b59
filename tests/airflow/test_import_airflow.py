"""``runlease import`` against Airflow's own CLI: export files it writes now, and ``airflow-db:``.

A throwaway AIRFLOW_HOME with a SQLite metadata database; connections and
variables are added with ``airflow connections add`` / ``variables set``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    root = tmp_path_factory.mktemp("airflow-import")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RUNLEASE_", "_AIRFLOW"))}
    env.update({"AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "RUNLEASE_HOME": str(root / "runlease"), "NO_COLOR": "1"})
    values = {"pw": "Pw" + secrets.token_hex(8), "key": "Ak" + secrets.token_hex(8), "var": "Vt" + secrets.token_hex(8)}

    def airflow(*args: str) -> None:
        proc = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    airflow("db", "migrate")
    airflow("connections", "add", "warehouse", "--conn-uri",
            f"postgres://etl:{values['pw']}@wh.internal:5432/analytics?sslmode=require")
    airflow("connections", "add", "registry", "--conn-json", json.dumps(
        {"conn_type": "http", "host": "registry.internal", "extra": {"api_key": values["key"]}}))
    airflow("variables", "set", "api_token", values["var"])
    airflow("connections", "export", str(root / "conns.yaml"))
    airflow("variables", "export", str(root / "vars.json"))
    env["EXPORT_DIR"] = str(root)
    return env, values


def runlease(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runlease", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_from_airflow_db_and_fresh_exports(airflow_db: tuple[dict[str, str], dict[str, str]]) -> None:
    env, values = airflow_db
    assert runlease(env, "init").returncode == 0
    dry = runlease(env, "import", "airflow-db:", "--env", "prod", "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    assert {(r["path"], r["status"]) for r in json.loads(dry.stdout)} == {
        ("prod/connections/warehouse", "would import"), ("prod/connections/registry", "would import"),
        ("prod/variables/api_token", "would import")}
    done = runlease(env, "import", "airflow-db:", "--env", "prod")
    assert done.returncode == 0, done.stderr
    assert "3 imported" in done.stdout
    again = runlease(env, "import", str(Path(env["EXPORT_DIR"]) / "conns.yaml"), "--env", "prod", "--format", "json")
    assert again.returncode == 0 and {r["status"] for r in json.loads(again.stdout)} == {"skipped"}
    other = runlease(env, "import", str(Path(env["EXPORT_DIR"]) / "vars.json"), "--env", "stage")
    assert other.returncode == 0 and "1 imported" in other.stdout
    got = runlease(env, "get", "prod/connections/warehouse", "--reveal")
    assert got.returncode == 0 and json.loads(got.stdout)["password"] == values["pw"]
    got = runlease(env, "get", "prod/connections/registry", "--reveal")
    assert json.loads(got.stdout)["extra"] == {"api_key": values["key"]}
    for proc in (dry, done, again, other):
        for value in values.values():
            assert value not in proc.stdout + proc.stderr
