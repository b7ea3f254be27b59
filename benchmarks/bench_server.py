"""Benchmark a lease over HTTP (``runlease serve``, keep-alive) against the in-process broker, same run.

    python benchmarks/bench_server.py [--quick] [--markdown docs/benchmarks.md]

Setup: a fresh home in the system temp dir (embedded SQLite store, WAL,
``synchronous=FULL``: every lease row and its audit event are one fsynced
transaction), three connection secrets, a policy whose grant names the
benchmark's workload, the ``static`` issuer. One ``runlease serve`` process on
127.0.0.1 (plain HTTP, loopback), verifying RS256 workload tokens of a
throw-away issuer whose JWKS is a file.

Scenarios, each at 1, 4 and 16 concurrent clients:

* **HTTP**: ``RemoteBroker.lease`` (the client runlease_kfp and the CLI use:
  urllib3 keep-alive connection, bearer token re-checked from its file, JSON,
  the Lease model), one connection per client; clients are spread over up to
  4 processes (threads inside each), released together by a barrier.
* **in-process** (the named baseline): ``Broker.lease`` on the same home, with
  the same verified workload identity and policy, clients as threads of one
  process released together.
* **HTTP floor**: ``GET /healthz`` from one client: what the HTTP stack alone
  costs per request on this machine.

Latency is per call (nearest-rank percentiles over all clients); leases/s =
all leases / (last finish - first start). The audit chain is verified after
the run and the lease events counted. A benchmark, not a test: targets are
reported met or not, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import benchdoc  # benchmarks/ is on sys.path when a script here runs

_ROOT = Path(__file__).resolve().parents[1]
for _p in (_ROOT / "src",):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

START, END = "<!-- bench:server:start -->", "<!-- bench:server:end -->"
TARGET_P50_MS = 2.0
TARGET_PER_S = 1000.0
CONCURRENCY = (1, 4, 16)
MAX_CLIENT_PROCESSES = 4
WARMUP = 20
SUBJECT = "system:serviceaccount:ml:bench-pipeline"
ISSUER = "https://kubernetes.default.svc.cluster.local"
REFS = ["dev/connections/warehouse", "dev/connections/model_registry", "dev/connections/feature_store"]
POLICY = f"""
[[grant]]
workloads    = ["{SUBJECT}"]
environments = ["dev"]
paths        = ["connections/*"]
capabilities = ["lease"]
"""


# --- setup ----------------------------------------------------------------------------------


def make_home(root: Path, key: str) -> Path:
    from runlease.models import RunIdentity
    from runlease.runtime import init_home
    from runlease.settings import Settings

    home = root / "home"
    rt, _ = init_home(Settings(home=home, master_key=key))
    admin = RunIdentity(orchestrator="cli", pipeline="bench")
    try:
        for i, ref in enumerate(REFS):
            rt.broker.put(ref, {"conn_type": "postgres", "host": f"db{i}.example.com", "login": "etl",
                                "password": f"bench-password-{i}-Xq81", "schema": "analytics", "port": 5432,
                                "extra": {}}, admin)
    finally:
        rt.close()
    (home / "policy.toml").write_text(POLICY)
    return home


def make_issuer(root: Path) -> tuple[Path, str]:
    """A JWKS file and one RS256 token shaped like a projected service-account token."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", use="sig", alg="RS256")
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": "runlease", "iat": now, "nbf": now, "exp": now + 7200,
              "kubernetes.io": {"namespace": "ml", "pod": {"name": "bench-pod", "uid": "0"},
                                "serviceaccount": {"name": "bench-pipeline", "uid": "0"}}}
    token = root / "token"
    token.write_text(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}))
    return jwks, token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, key: str, jwks: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    env.update(RUNLEASE_HOME=str(home), RUNLEASE_MASTER_KEY=key,
               PYTHONPATH=os.pathsep.join([str(_ROOT / "src"), env.get("PYTHONPATH", "")]))
    handle = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "runlease", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--oidc-issuer", ISSUER, "--oidc-jwks", str(jwks), "--sweep-interval", "0", *extra],
                            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(proc)
                raise SystemExit(f"runlease serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def identity(client: int):
    from runlease.models import RunIdentity

    return RunIdentity(orchestrator="kfp", pipeline="bench-pipeline", run_id="bench-run", task_id=f"client-{client}")


# --- clients --------------------------------------------------------------------------------


def _http_thread(url: str, token: Path, client: int, n: int, ready, go, out: list) -> None:
    from runlease.remote.broker import RemoteBroker
    from runlease.remote.http import ServerClient

    broker = RemoteBroker(ServerClient(url, token, pool_size=1))
    who = identity(client)
    for i in range(WARMUP):
        broker.lease(REFS[i % len(REFS)], who, 600)
    ready()
    go()
    lat, clock = [], time.perf_counter_ns
    start = time.time()
    for i in range(n):
        t0 = clock()
        broker.lease(REFS[i % len(REFS)], who, 600)
        lat.append(clock() - t0)
    out.append((start, time.time(), lat))


def _http_process(url: str, token: str, clients: list[int], n: int, barrier, queue) -> None:
    out: list = []
    ready_count = threading.Semaphore(0)
    go = threading.Event()
    threads = [threading.Thread(target=_http_thread, args=(url, Path(token), c, n, ready_count.release, go.wait, out))
               for c in clients]
    for t in threads:
        t.start()
    for _ in threads:
        ready_count.acquire()
    barrier.wait()
    cpu0 = process_cpu_s(os.getpid())
    go.set()
    for t in threads:
        t.join()
    queue.put((out, process_cpu_s(os.getpid()) - cpu0))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Result:
    label: str
    clients: int
    start: float
    end: float
    lat_ns: list[int]
    #: CPU seconds the process doing the leasing spent during the scenario, warm-up included:
    #: the server process (HTTP rows) or the benchmark process itself (in-process rows).
    server_cpu_s: float | None = None
    #: CPU seconds of the HTTP client processes during the timed leases (HTTP rows only).
    client_cpu_s: float | None = None

    @property
    def ops(self) -> int:
        return len(self.lat_ns)

    @property
    def per_s(self) -> float:
        return self.ops / (self.end - self.start)

    def pct(self, q: float) -> float:
        ordered = sorted(self.lat_ns)
        return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))] / 1e6


def http_run(url: str, token: Path, clients: int, total: int) -> Result:
    per_client = total // clients
    processes = min(clients, MAX_CLIENT_PROCESSES)
    groups = [list(range(p, clients, processes)) for p in range(processes)]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_http_process, args=(url, str(token), g, per_client, barrier, queue)) for g in groups]
    for p in procs:
        p.start()
    parts = [queue.get(timeout=600) for _ in procs]
    rows = [row for part in parts for row in part[0]]
    for p in procs:
        p.join(timeout=60)
    return Result("HTTP (runlease serve)", clients, min(r[0] for r in rows), max(r[1] for r in rows),
                  [x for r in rows for x in r[2]], client_cpu_s=sum(part[1] for part in parts))


def inprocess_run(home: Path, key: str, clients: int, total: int) -> Result:
    from runlease.models import Verification
    from runlease.runtime import open_runtime
    from runlease.server.policy_view import ServerPolicy
    from runlease.settings import Settings

    rt = open_runtime(Settings(home=home, master_key=key))
    rt.broker.policy = ServerPolicy(rt.policy)  # type: ignore[assignment]  # the server's policy view
    proof = Verification(method="oidc", subject=SUBJECT, issuer=ISSUER)
    per_client = total // clients
    out: list = []
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        who = identity(c).model_copy(update={"principal": SUBJECT, "verification": proof})
        for i in range(WARMUP):
            rt.broker.lease(REFS[i % len(REFS)], who, 600)
        barrier.wait()
        lat, clock = [], time.perf_counter_ns
        start = time.time()
        for i in range(per_client):
            t0 = clock()
            rt.broker.lease(REFS[i % len(REFS)], who, 600)
            lat.append(clock() - t0)
        out.append((start, time.time(), lat))

    cpu0 = process_cpu_s(os.getpid())
    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        cpu = process_cpu_s(os.getpid()) - cpu0  # this process runs nothing else meanwhile
        rt.close()
    return Result("in-process Broker.lease", clients, min(r[0] for r in out), max(r[1] for r in out),
                  [x for r in out for x in r[2]], server_cpu_s=cpu)


def http_floor(url: str, n: int) -> Result:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(url.rsplit(":", 1)[1]), maxsize=1)
    for _ in range(WARMUP):
        pool.request("GET", "/healthz")
    lat, clock = [], time.perf_counter_ns
    start = time.time()
    for _ in range(n):
        t0 = clock()
        pool.request("GET", "/healthz")
        lat.append(clock() - t0)
    return Result("HTTP floor: GET /healthz", 1, start, time.time(), lat)


def check_chain(home: Path, key: str, expected: int) -> str:
    from runlease.ledger.base import AuditQuery
    from runlease.runtime import open_runtime
    from runlease.settings import Settings

    rt = open_runtime(Settings(home=home, master_key=key))
    try:
        result = rt.ledger.verify()
        leases = sum(1 for e in rt.ledger.events(AuditQuery(action="lease")) if e.outcome.value == "ok")
    finally:
        rt.close()
    return f"{'OK' if result.ok else 'BROKEN'}, {leases:,} lease events (expected {expected:,})"


# --- report ---------------------------------------------------------------------------------


def render(args: argparse.Namespace, command: str, machine: dict[str, str], rows: list[tuple[Result, Result]],
           floor: Result, chain: str) -> str:
    out = [START, "## runlease serve: lease over HTTP vs in-process (`benchmarks/bench_server.py`)", ""]
    out += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by:", "", "```", command, "```", ""]
    out += ["| Machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in machine.items()] + [""]
    out += [
        "One `runlease serve` process (uvicorn with uvloop/httptools, one worker, broker calls on the event "
        "loop: the default for the embedded store) on 127.0.0.1, plain HTTP, RS256 workload token "
        "(signature verified once, then cached by digest until it expires), policy with a `workloads` grant; "
        "the embedded store (SQLite WAL, synchronous=FULL: one fsynced transaction per lease, lease row + "
        "hash-chained audit event). HTTP clients use `RemoteBroker.lease` (urllib3 keep-alive, one connection "
        f"per client, token file re-checked per request, JSON + Lease model), spread over up to "
        f"{MAX_CLIENT_PROCESSES} processes. In-process baseline: `Broker.lease` on the same home, same policy "
        f"view and verified identity, clients as threads of one process. {WARMUP} warm-up leases per client "
        "not timed; latency per call, nearest-rank percentiles pooled over clients; leases/s = all leases / "
        "(last finish - first start). Both run one after the other in this run, on the same home.",
        "",
        "| clients | scenario | leases | p50 ms | p99 ms | leases/s | p50 ratio HTTP / in-process "
        "| throughput ratio HTTP / in-process | CPU ms / lease (leasing process) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def cpu_ms(r: Result) -> str:
        return f"{1000 * r.server_cpu_s / (r.ops + r.clients * WARMUP):.3f}" if r.server_cpu_s else "n/a"

    for http, local in rows:
        out.append(f"| {local.clients} | {local.label} | {local.ops:,} | {local.pct(50):.3f} | {local.pct(99):.3f} "
                   f"| {local.per_s:,.0f} | | | {cpu_ms(local)} |")
        cpu = cpu_ms(http)
        out.append(f"| {http.clients} | {http.label} | {http.ops:,} | {http.pct(50):.3f} | {http.pct(99):.3f} "
                   f"| {http.per_s:,.0f} | {http.pct(50) / local.pct(50):.2f}x | {http.per_s / local.per_s:.2f}x "
                   f"| {cpu} |")
    out.append(f"| 1 | {floor.label} | {floor.ops:,} | {floor.pct(50):.3f} | {floor.pct(99):.3f} "
               f"| {floor.per_s:,.0f} | | | |")
    out += ["", f"Audit chain after the run: {chain}.", ""]
    one = rows[0][0]
    best = max(rows, key=lambda r: r[0].per_s)[0]

    def verdict(ok: bool, detail: str) -> str:
        return f"{'met' if ok else '**not met**'} ({detail})"

    out += ["Targets (2-core machine):", "",
            f"- p50 of a lease over HTTP on loopback, one client, <= {TARGET_P50_MS:g} ms: "
            + verdict(one.pct(50) <= TARGET_P50_MS, f"p50 {one.pct(50):.3f} ms"),
            f"- >= {TARGET_PER_S:,.0f} leases/s from one server process: "
            + verdict(best.per_s >= TARGET_PER_S, f"best {best.per_s:,.0f} leases/s at {best.clients} clients"),
            "- ratio to in-process: recorded in the table.", ""]
    local_one = rows[0][1]
    local_cpu = 1000 * (local_one.server_cpu_s or 0.0) / (local_one.ops + local_one.clients * WARMUP)
    fsync_ms = max(0.0, local_one.pct(50) - local_cpu)
    one_cpu = 1000 * (rows[0][0].server_cpu_s or 0.0) / (rows[0][0].ops + rows[0][0].clients * WARMUP)
    serial_bound = 1000 / (one_cpu + fsync_ms)
    client_cpu = 1000 * (rows[0][0].client_cpu_s or 0.0) / rows[0][0].ops
    out += ["Reading the numbers:", "",
            "- **Shared machine**: other helpers' work ran on the same 2 cores during this run (load averages "
            "above), so the wall-clock columns (p50, p99, leases/s) are noisy and pessimistic; the CPU column "
            "is the steadier measure of what the server itself costs.",
            f"- The HTTP stack alone (GET /healthz, no auth, no ledger) costs p50 {floor.pct(50):.3f} ms here; "
            "the rest of an HTTP lease is the broker's own work (the in-process row) plus the token check "
            "(a digest lookup once verified), JSON and the client's Lease model.",
            "- CPU ms / lease: user + system CPU of the leasing process during the scenario (the server process "
            "for HTTP rows, the benchmark process for in-process rows), warm-up included, divided by its leases. "
            "The HTTP row minus the in-process row is what the HTTP layer (uvicorn, routing, token check, JSON) "
            "adds. On an idle core the server's CPU alone would allow 1,000 / that figure leases/s.",
            "- Every lease is one durable SQLite commit (synchronous=FULL, fsync) on one home, and commits are "
            "serialized (one writer). With broker calls on the event loop (the default for the embedded store) "
            "the server does one lease at a time: its CPU per lease plus the wait for that commit's fsync "
            f"(estimated as the one-client in-process p50 minus its CPU per lease: {fsync_ms:.3f} ms in this run). "
            f"1,000 / ({one_cpu:.3f} + {fsync_ms:.3f}) = {serial_bound:,.0f} leases/s is the ceiling of one such "
            "process here; more clients then add queueing latency (p99), not throughput. `--broker-threads` "
            "overlaps the fsync with other requests but costs more CPU per lease (GIL hand-offs between the "
            "event loop and the worker), which on two shared cores did not pay off when measured. Above this "
            "ceiling one process would need less CPU per lease, a faster fsync, or group commit (several "
            "leases' rows in one durable commit, each answered after it), which the ledger does not do.",
            "- The client processes share the machine's cores with the server (and with the other helpers' work): "
            f"the HTTP clients spent {client_cpu:.3f} ms of CPU per lease at one client (`RemoteBroker.lease`: "
            f"urllib3, JSON, the Lease model), so one HTTP lease costs about {one_cpu + client_cpu:.3f} ms of CPU "
            "on the machine in all; on 2 cores that also carry other work (load average above), that, not the "
            "server alone, is what caps the multi-client rows.",
            "- What changed since the 2026-12-04 23:10 UTC run of this benchmark (server CPU 0.96-1.07 ms per "
            "lease, p50 4.6 ms at one client under a heavier load): `POST /v1/leases` is a plain Starlette "
            "endpoint (no FastAPI dependency solving; the body validated by pydantic straight from its bytes; "
            "same checks, same order), and the audit anchor is not re-parsed and re-MACed when its bytes are the "
            "record this process just wrote. Token verification per request, policy, ownership and the fsynced "
            "commit are unchanged."]
    if args.quick:
        out += ["", "**--quick run: few samples; not representative.**"]
    out.append(END)
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few samples (smoke run)")
    p.add_argument("--markdown", type=Path, help="write/update the server section of this markdown file")
    p.add_argument("--broker-threads", action="store_true",
                   help="serve with --broker-threads (broker calls in worker threads, not on the event loop)")
    args = p.parse_args()
    total = 240 if args.quick else 1_600
    command = shlex.join(["python", *sys.argv])
    key = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory(prefix="runlease-bench-server-") as tmp:
        root = Path(tmp)
        machine = {
            "CPU": benchdoc.cpu_model(),
            "Cores": f"{os.cpu_count()} (usable: {benchdoc.usable_cores()})",
            "Python": f"{platform.python_version()} ({platform.python_implementation()})",
            "FastAPI / uvicorn / PyJWT": " / ".join(benchdoc.version(d) for d in ("fastapi", "uvicorn", "PyJWT")),
            "Temp dir filesystem": f"{tmp}: {benchdoc.filesystem_of(root)}",
            "Load average at start (1/5/15 min)": f"{benchdoc.load_average()} (other work on the machine shows here)",
        }
        home = make_home(root, key)
        jwks, token = make_issuer(root)
        proc, url = start_server(home, key, jwks, root / "server.log",
                                 ["--broker-threads"] if args.broker_threads else [])
        rows: list[tuple[Result, Result]] = []
        try:
            floor = http_floor(url, total)
            for clients in CONCURRENCY:
                print(f"{clients} client(s): {total:,} leases over HTTP, then in-process ...", file=sys.stderr)
                cpu0 = process_cpu_s(proc.pid)
                http = http_run(url, token, clients, total)
                http.server_cpu_s = process_cpu_s(proc.pid) - cpu0  # includes the clients' warm-up leases
                local = inprocess_run(home, key, clients, total)
                rows.append((http, local))
        finally:
            stop_server(proc)
        expected = sum(r.ops + r.clients * WARMUP for pair in rows for r in pair)
        chain = check_chain(home, key, expected)
        machine["Load average at end (1/5/15 min)"] = benchdoc.load_average()
    section = render(args, command, machine, rows, floor, chain)
    benchdoc.publish(section, args.markdown, START, END)


if __name__ == "__main__":
    main()
