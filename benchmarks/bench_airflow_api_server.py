"""A connection fetched inside a running task through the Execution API: runlease API-server mode vs stock.

    python benchmarks/bench_airflow_api_server.py [--quick] [--markdown docs/benchmarks.md] [--calls N]

One real Airflow site (SQLite metadata DB, ``airflow api-server`` on 127.0.0.1
with runlease as its ``[secrets] backend``, LocalExecutor) and one task that,
inside the same try, calls ``BaseHook.get_connection`` alternately for:

  * ``bench_rl``: held by runlease -- task SDK -> supervisor -> HTTP -> the API
    server validates the JWT, runlease looks the task instance up in the
    metadata DB (verified identity), checks policy (``require_verified``) and
    hands out the try's lease (the first call leases; later calls reuse that
    lease after revalidating it against the store and the ledger);
  * ``bench_stock``: Airflow's stock path for the same thing -- a connection in
    the metadata DB (``airflow connections add``), resolved by the API server's
    ``MetastoreBackend``. runlease's ``connections_lookup_pattern`` names
    ``bench_rl`` only, so the stock lookup never enters runlease.

Both go through the same task, supervisor, HTTP client and API server, in the
same run, interleaved call by call, so load on the shared machine hits both
alike. The worker side has no runlease setting (API-server mode). Latency is
measured in the task around ``get_connection``. This is a benchmark, not a
test: it reports the target as met or not and never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import benchdoc  # benchmarks/ is on sys.path when a script here runs

START, END = "<!-- bench:airflow-api-server:start -->", "<!-- bench:airflow-api-server:end -->"
REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "airflow" / "dag_runner.py"
BIN = Path(sys.executable).parent
TARGET_RATIO = 1.5
POLICY = """\
[[grant]]
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
principals       = ["airflow:rl_bench_api"]
require_verified = true
environments     = ["dev"]
paths            = ["connections/bench_rl"]
capabilities     = ["lease", "read"]
"""

DAG = '''
import json, time
from datetime import datetime
from airflow.sdk import DAG, BaseHook, task

with DAG(dag_id="rl_bench_api", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as bench_dag:

    @task
    def fetch_both() -> None:
        calls = CALLS
        samples = {"bench_rl": [], "bench_stock": []}
        first = {}
        try:  # warm the path (HTTP connection, imports) with an id nobody holds
            BaseHook.get_connection("bench_warmup")
        except Exception:
            pass
        for conn_id in samples:  # the first call of the try: runlease leases (a durable audit write)
            start = time.perf_counter()
            BaseHook.get_connection(conn_id)
            first[conn_id] = (time.perf_counter() - start) * 1e3
        for _ in range(calls):
            for conn_id in samples:
                start = time.perf_counter()
                BaseHook.get_connection(conn_id)
                samples[conn_id].append((time.perf_counter() - start) * 1e3)
        print("BENCH " + json.dumps({"samples": samples, "first": first}), flush=True)

    fetch_both()
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(port: int, proc: subprocess.Popen, log_file: Path, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"api-server exited: {log_file.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"api-server did not answer within {deadline_s}s")


def run(args: argparse.Namespace) -> dict:
    from runlease.models import RunIdentity
    from runlease.runtime import init_home
    from runlease.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="runlease-bench-apimode-"))
    proc = None
    try:
        home = root / "runlease"
        runtime, _ = init_home(Settings(home=home))
        password = "Bench/" + secrets.token_urlsafe(12)
        runtime.broker.put("dev/connections/bench_rl", {
            "conn_type": "postgres", "host": "warehouse.internal", "login": "etl", "password": password,
            "schema": "analytics", "port": 5432, "extra": {"sslmode": "require"}},
            RunIdentity(orchestrator="cli", pipeline="bench"))
        runtime.close()
        (home / "policy.toml").write_text(POLICY)
        dags = root / "dags"
        dags.mkdir()
        (dags / "rl_bench_api.py").write_text(DAG.replace("CALLS", str(args.calls)))
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RUNLEASE_", "_AIRFLOW"))}
        roots = [str(REPO / d) for d in ("src", "airflow_provider")]
        base.update({
            "PYTHONPATH": os.pathsep.join([*roots, *filter(None, [os.environ.get("PYTHONPATH", "")])]),
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "NO_COLOR": "1",
        })
        server_env = dict(base, **{
            "AIRFLOW__SECRETS__BACKEND": "runlease_airflow.secrets.RunleaseBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {"home": str(home), "env": "dev", "ttl": 900, "connections_lookup_pattern": "^bench_rl$"}),
        })
        (root / "airflow").mkdir()

        def airflow(*cli: str) -> None:
            done = subprocess.run([str(BIN / "airflow"), *cli], env=base, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"airflow {cli[0]} failed: {done.stderr[-2000:]}")

        airflow("db", "migrate")
        airflow("connections", "add", "bench_stock", "--conn-type", "postgres", "--conn-host", "warehouse.internal",
                "--conn-login", "etl", "--conn-password", "Stock/" + secrets.token_urlsafe(12),
                "--conn-schema", "analytics", "--conn-port", "5432", "--conn-extra", '{"sslmode": "require"}')
        log_file = root / "api-server.log"
        with log_file.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                env=server_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=root)
        wait_for_health(port, proc, log_file)
        # The worker side: no secrets backend setting, no RUNLEASE_* (API-server mode).
        worker = subprocess.run([sys.executable, str(RUNNER), "rl_bench_api", "--executor"], env=base,
                                capture_output=True, text=True, timeout=900, cwd=root)
        result = next((json.loads(line[len("RESULT "):]) for line in worker.stdout.splitlines()
                       if line.startswith("RESULT ")), None)
        if worker.returncode != 0 or result is None or result["state"] != "success":
            raise SystemExit(f"benchmark DAG failed: {worker.stdout[-2000:]} {worker.stderr[-2000:]}")
        task_log = (root / "airflow" / "logs" / "dag_id=rl_bench_api" / f"run_id={result['run_id']}"
                    / "task_id=fetch_both" / "attempt=1.log").read_text()
        line = next(json.loads(entry)["event"] for entry in task_log.splitlines() if '"BENCH ' in entry)
        measured = json.loads(line[len("BENCH "):])
        return {"samples": measured["samples"], "first": measured["first"], "calls": args.calls}
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def render(r: dict, args: argparse.Namespace, command: str) -> str:
    rl, stock = r["samples"]["bench_rl"], r["samples"]["bench_stock"]
    p50_rl, p50_stock = benchdoc.percentile(rl, 0.5), benchdoc.percentile(stock, 0.5)
    ratio = p50_rl / p50_stock
    out = [START, "## Airflow API-server mode: a connection fetched in a running task through the Execution API", ""]
    out += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by:", "", "```", command, "```", ""]
    out += ["| Machine | |", "|---|---|",
            f"| CPU | {benchdoc.cpu_model()} |", f"| usable cores | {benchdoc.usable_cores()} |",
            f"| load average (1/5/15 min) at the end | {benchdoc.load_average()} |",
            f"| Airflow | {benchdoc.version('apache-airflow')} |",
            f"| Task SDK | {benchdoc.version('apache-airflow-task-sdk')} |",
            "| metadata DB | SQLite (one file, the API server and the LocalExecutor share it) |", ""]
    out += [
        "One task, one try, `BaseHook.get_connection` alternating between the two connections "
        f"({r['calls']} calls each after the first call of each), timed inside the task: Task SDK -> supervisor -> "
        "HTTP -> `airflow api-server` (JWT validation, secrets chain) and back. Worker side without any runlease "
        "setting. Baseline: Airflow's stock metastore connection on the same path, same run.",
        "",
        "| connection | p50 | p90 | p99 |",
        "|---|---:|---:|---:|",
        f"| baseline: stock metastore connection (`MetastoreBackend` in the API server) | {p50_stock:.2f} ms | "
        f"{benchdoc.percentile(stock, 0.9):.2f} ms | {benchdoc.percentile(stock, 0.99):.2f} ms |",
        f"| runlease API-server mode (verified TI lookup + policy + the try's lease, revalidated) | {p50_rl:.2f} ms "
        f"| {benchdoc.percentile(rl, 0.9):.2f} ms | {benchdoc.percentile(rl, 0.99):.2f} ms |",
        "",
        "The first call of the try, not in the table (one sample each; the runlease one issues the try's lease "
        f"with a durable, hash-chained audit write): stock {r['first']['bench_stock']:.2f} ms, "
        f"runlease {r['first']['bench_rl']:.2f} ms.",
        "",
        f"Target: runlease p50 <= {TARGET_RATIO}x the stock path: "
        + ("met" if ratio <= TARGET_RATIO else "**not met**") + f" ({ratio:.2f}x).",
    ]
    if args.quick:
        out += ["", "**--quick run: few calls; not representative.**"]
    out.append(END)
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few calls (smoke run)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per connection (default 500, quick 50)")
    p.add_argument("--markdown", type=Path, help="write/update the airflow-api-server section of this file")
    args = p.parse_args()
    if args.calls is None:
        args.calls = 50 if args.quick else 500
    command = shlex.join(["python", *sys.argv])
    section = render(run(args), args, command)
    benchdoc.publish(section, args.markdown, START, END)


if __name__ == "__main__":
    main()
