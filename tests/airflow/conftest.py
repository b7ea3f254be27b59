"""Airflow test fixtures: one Airflow site per session, DAG runs in subprocesses, one API server.

Airflow reads its configuration once per process, at import, so every DAG run
happens in a subprocess (:mod:`dag_runner`) with the site's environment. The
expensive parts -- ``airflow db migrate``, the API server, the DAG runs -- are
session-scoped and each test asserts one property of their results. Every
subprocess has a timeout and the API server is stopped by its process group.

This pytest process imports Airflow too (backend and config tests build a
``RunleaseBackend`` directly), so AIRFLOW_HOME is pointed at a throwaway
directory before anything imports Airflow.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

# Before any test module imports Airflow: never touch a developer's ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="runlease-airflow-pytest-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from runlease.models import RunIdentity  # noqa: E402
from runlease.runtime import Runtime, init_home, open_runtime  # noqa: E402
from runlease.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RUNNER = HERE / "dag_runner.py"
BIN = Path(sys.executable).parent
ADMIN = RunIdentity(orchestrator="cli", pipeline="tests", principal="cli:tests")

POLICY = """\
[[grant]]
description  = "the test harness administers everything"
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
description  = "the example and test DAGs lease what they use"
principals   = ["airflow:training_*", "airflow:rl_*"]
environments = ["dev"]
paths        = ["connections/*", "variables/*", "tokens/*"]
capabilities = ["lease", "read"]

[[grant]]
description  = "the rotation DAGs rotate what has a rotation policy and read the rotators' admin connections"
principals   = ["airflow:rl_rotation", "airflow:runlease_rotation"]
environments = ["dev"]
paths        = ["*"]
capabilities = ["rotate", "read"]

[[grant]]
description  = "operators outside any DAG (airflow connections get / variables get) may read two secrets"
principals   = ["airflow:-"]
environments = ["dev"]
paths        = ["connections/warehouse", "variables/api_token"]
capabilities = ["read"]
"""


def leak_forms(value: str) -> list[str]:
    """A value and the encodings it could appear in: raw, percent-encoded, form-encoded, JSON-escaped."""
    return list(dict.fromkeys([value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]]))


@dataclass
class Secrets:
    """Per-session random values, so a hit in a leak scan can only come from this session."""

    warehouse_password: str = field(default_factory=lambda: "Wh/" + secrets.token_urlsafe(12) + "@pw")
    warehouse_api_key: str = field(default_factory=lambda: "ak" + secrets.token_hex(10))
    registry_password: str = field(default_factory=lambda: "Rg" + secrets.token_hex(10))
    api_token: str = field(default_factory=lambda: "tok" + secrets.token_hex(12))
    feature_token: str = field(default_factory=lambda: "fs" + secrets.token_hex(12))

    def values(self) -> list[str]:
        return [self.warehouse_password, self.warehouse_api_key, self.registry_password, self.api_token,
                self.feature_token]

    def needles(self) -> list[str]:
        return [form for value in self.values() for form in leak_forms(value)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AirflowSite:
    root: Path
    runlease_home: Path
    airflow_home: Path
    dags: Path
    api_port: int
    env: dict[str, str]
    secrets: Secrets

    def runtime(self) -> Runtime:
        return open_runtime(Settings(home=self.runlease_home))

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def airflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "airflow"), *args, timeout=timeout)


def stock_store(home: Path, values: Secrets) -> None:
    runtime, _ = init_home(Settings(home=home))
    try:
        broker = runtime.broker
        broker.put("dev/connections/warehouse", {
            "conn_type": "postgres", "host": "warehouse.internal", "login": "etl",
            "password": values.warehouse_password, "schema": "analytics", "port": 5432,
            "extra": {"sslmode": "require", "api_key": values.warehouse_api_key},
        }, ADMIN)
        broker.put("dev/connections/model_registry", {
            "conn_type": "http", "host": "registry.internal", "login": "publisher",
            "password": values.registry_password, "extra": {},
        }, ADMIN)
        broker.put("dev/variables/api_token", values.api_token, ADMIN, kind="variables")
        broker.put("dev/variables/feature_store_token", values.feature_token, ADMIN, kind="variables")
    finally:
        runtime.close()
    (home / "policy.toml").write_text(POLICY)


@pytest.fixture(scope="session")
def airflow_site() -> Iterator[AirflowSite]:
    root = Path(tempfile.mkdtemp(prefix="runlease-airflow-site-"))
    values = Secrets()
    runlease_home = root / "runlease"
    stock_store(runlease_home, values)
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags_examples" / "training_pipeline.py", dags)
    for dag_file in (HERE / "dags").glob("*.py"):
        shutil.copy(dag_file, dags)
    airflow_home = root / "airflow"
    airflow_home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RUNLEASE_", "_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        "AIRFLOW__SECRETS__BACKEND": "runlease_airflow.secrets.RunleaseBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"env": "dev", "ttl": 900}),
        # The home comes only from a per-key override (no RUNLEASE_HOME in this environment),
        # so every run also proves Airflow's AIRFLOW__SECRETS__BACKEND_KWARG__<KEY> path works.
        "AIRFLOW__SECRETS__BACKEND_KWARG__HOME": str(runlease_home),
        "NO_COLOR": "1",
        # A decoy with the same conn_id in the next backend of the chain: if a runlease denial
        # fell through, Airflow would hand the task this one instead of failing it.
        "AIRFLOW_CONN_WAREHOUSE": "postgres://decoy:decoy-password@decoy.invalid:5432/decoy",
    })
    site = AirflowSite(root, runlease_home, airflow_home, dags, port, env, values)
    migrate = site.airflow("db", "migrate", timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    yield site
    if not os.environ.get("RUNLEASE_TEST_KEEP_SITE"):  # set it to inspect a failed run's files
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class DagRuns:
    results: dict[str, dict[str, Any]]
    stdout: str
    stderr: str

    def __getitem__(self, dag_id: str) -> dict[str, Any]:
        return self.results[dag_id]


def run_dags(site: AirflowSite, dag_ids: list[str], *, executor: bool) -> DagRuns:
    args = [sys.executable, str(RUNNER), *dag_ids] + (["--executor"] if executor else [])
    # Bounded well below CI's budget: once, under heavy load, LocalExecutor.end() waited forever
    # for a worker that never took its shutdown message (Airflow 3.3.2); fail fast instead.
    proc = site.run(*args, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["dag_id"]] = result
    assert set(results) == set(dag_ids), proc.stdout[-3000:]
    return DagRuns(results, proc.stdout, proc.stderr)


IN_PROCESS_DAGS = ["training_pipeline", "rl_retry", "rl_skip", "rl_mapped", "untrusted_reporting"]
EXECUTOR_DAGS = ["training_pipeline", "rl_leaky", "rl_retry", "rl_parse_time", "rl_killed"]


@pytest.fixture(scope="session")
def inprocess_runs(airflow_site: AirflowSite) -> DagRuns:
    """``dag.test()`` in one process: fast, but no task log files and no stdout masking."""
    return run_dags(airflow_site, IN_PROCESS_DAGS, executor=False)


def _wait_for_health(port: int, proc: subprocess.Popen[bytes], log_file: Path, deadline_s: float) -> None:
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"api-server exited with {proc.returncode}: {log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"api-server did not answer within {deadline_s}s: {log_file.read_text()[-3000:]}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def api_server(airflow_site: AirflowSite) -> Iterator[int]:
    """``airflow api-server`` on 127.0.0.1 in its own process group; stopped by that group's id."""
    log_file = airflow_site.root / "api-server.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(airflow_site.api_port),
             "--workers", "1"],
            env=airflow_site.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=airflow_site.root,
        )
    try:
        _wait_for_health(airflow_site.api_port, proc, log_file, deadline_s=180)
        yield airflow_site.api_port
    finally:
        _stop_group(proc)


@pytest.fixture(scope="session")
def executor_runs(airflow_site: AirflowSite, api_server: int) -> DagRuns:
    """``dag.test(use_executor=True)`` with LocalExecutor: every task supervised in its own process."""
    return run_dags(airflow_site, EXECUTOR_DAGS, executor=True)


@pytest.fixture()
def site_runtime(airflow_site: AirflowSite) -> Iterator[Runtime]:
    runtime = airflow_site.runtime()
    yield runtime
    runtime.close()
