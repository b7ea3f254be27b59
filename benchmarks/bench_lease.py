"""Benchmark runlease.broker.Broker.lease on the embedded store with a durable audit log.

    python benchmarks/bench_lease.py [--quick] [--markdown docs/benchmarks.md]

Setup: the ``static`` issuer, the local SQLite store (WAL, ``synchronous=FULL``,
as runlease.clients.db configures it: every lease row and its audit event are one
fsynced transaction), the hash-chained audit log with its anchor file, a fresh
home in the system temp dir per scenario, three connection secrets leased in
turn. No policy file.

Scenarios:
  (a) one process, N leases with a warm cache: p50/p95/p99 latency, leases/s;
  (b) 4 processes on the same home, M leases each, released together by a
      barrier: aggregate leases/s = all leases / (last finish - first start).
Baselines measured in the same run, same filesystem:
  * the same leases with the cache disabled (every lease unwraps the data key
    and decrypts);
  * a raw SQLite ``BEGIN IMMEDIATE; INSERT; COMMIT`` with WAL + synchronous=FULL:
    the floor the disk and SQLite impose on one durable write.
After every runlease scenario the audit chain is verified and the number of
lease events checked. This is a benchmark, not a test: it reports targets as
met or not and never fails on timing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchdoc  # benchmarks/ is on sys.path when a script here runs

# Import runlease from this checkout even when the venv's editable install points elsewhere.
_SRC = Path(__file__).resolve().parents[1] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from runlease.ledger.base import AuditQuery  # noqa: E402
from runlease.models import RunIdentity  # noqa: E402
from runlease.runtime import init_home, open_runtime  # noqa: E402
from runlease.settings import Settings  # noqa: E402

START, END = "<!-- bench:lease:start -->", "<!-- bench:lease:end -->"
TARGET_P50_MS = 1.0
TARGET_AGG_PER_S = 2000.0
PROCESSES = 4
WARMUP = 50
REFS = ["warehouse", "model_registry", "feature_store"]
KINDS = ("lease", "lease-nocache", "raw", "lease-noanchor")  # multi-process scenarios


# --- setup ----------------------------------------------------------------------


def make_home(root: Path, name: str) -> Path:
    home = root / name
    rt, _ = init_home(Settings(home=home))
    admin = RunIdentity(orchestrator="cli", pipeline="bench")
    for i, ref in enumerate(REFS):
        rt.broker.put(ref, {
            "conn_type": "postgres", "host": f"db{i}.example.com", "login": "etl",
            "password": f"bench-password-{i}-Xq81", "schema": "analytics", "port": 5432,
            "extra": {"sslmode": "require"},
        }, admin)
    rt.close()
    return home


def identity(worker: int) -> RunIdentity:
    return RunIdentity(orchestrator="airflow", pipeline="bench_dag", run_id=f"bench-run-{worker}",
                       task_id="lease", try_number=1)


# --- measured loops (also the bodies of the worker processes) --------------------


def lease_loop(home: Path, n: int, worker: int, cache: bool,
               barrier=None) -> tuple[float, float, list[int], float]:
    """Open a runtime, warm up, (wait for the others,) then time ``n`` leases one by one."""
    rt = open_runtime(Settings(home=home))
    try:
        if not cache:
            rt.broker.cache.max_entries = 0  # every lease misses: unwrap the DEK and decrypt
        who = identity(worker)
        for i in range(WARMUP):
            rt.broker.lease(REFS[i % len(REFS)], who)
        if barrier is not None:
            barrier.wait()
        lat: list[int] = []
        lease, clock = rt.broker.lease, time.perf_counter_ns
        cpu0, start = time.process_time(), time.perf_counter()
        for i in range(n):
            t0 = clock()
            lease(REFS[i % len(REFS)], who)
            lat.append(clock() - t0)
        end, cpu = time.perf_counter(), time.process_time() - cpu0
        if cache:
            assert rt.broker.cache.misses == len(REFS), "cache was not warm"
        else:
            assert rt.broker.cache.hits == 0, "cache was not disabled"
        return start, end, lat, cpu
    finally:
        rt.close()


def raw_open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def raw_loop(path: Path, n: int, worker: int, barrier=None) -> tuple[float, float, list[int], float]:
    """The floor: one durable INSERT+COMMIT per iteration, row about the size of a lease row."""
    conn = raw_open(path)
    row = ("x" * 200, b"y" * 64)
    try:
        for _ in range(WARMUP):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(a, b) VALUES (?, ?)", row)
            conn.execute("COMMIT")
        if barrier is not None:
            barrier.wait()
        lat: list[int] = []
        clock = time.perf_counter_ns
        cpu0, start = time.process_time(), time.perf_counter()
        for _ in range(n):
            t0 = clock()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(a, b) VALUES (?, ?)", row)
            conn.execute("COMMIT")
            lat.append(clock() - t0)
        end, cpu = time.perf_counter(), time.process_time() - cpu0
        return start, end, lat, cpu
    finally:
        conn.close()


def _worker(kind: str, target: str, n: int, worker: int, barrier, queue) -> None:
    try:
        if kind == "raw":
            result = raw_loop(Path(target), n, worker, barrier)
        else:
            if kind == "lease-noanchor":
                # Diagnostic only: skip advancing the audit anchor file after each commit, to show
                # what that per-lease flock + in-place pwrite costs when processes contend.
                import runlease.ledger.sqlite as sqlite_ledger

                sqlite_ledger.advance_anchor = lambda *args, **kwargs: None
            result = lease_loop(Path(target), n, worker, cache=(kind != "lease-nocache"), barrier=barrier)
        queue.put(("ok", worker, result))
    except BaseException as err:  # reported to the parent, never swallowed
        barrier.abort()
        queue.put(("error", worker, f"{type(err).__name__}: {err}"))


# --- scenarios ---------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    ops: int
    seconds: float
    latencies_ns: list[int] = field(repr=False)
    processes: int = 1
    chain: str = ""
    cpu_s: float = 0.0  # process CPU time of the measured loop(s), summed over processes

    @property
    def cpu_ms_per_op(self) -> float:
        return self.cpu_s / self.ops * 1e3

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        """Latency percentile in ms (nearest-rank)."""
        ordered = sorted(self.latencies_ns)
        k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
        return ordered[k] / 1e6

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ns) / 1e6


def check_chain(home: Path, expected_leases: int, *, anchor_skipped: bool = False) -> str:
    rt = open_runtime(Settings(home=home))
    try:
        if anchor_skipped:  # the diagnostic scenario left the anchor behind on purpose
            rt.ledger.reanchor()  # type: ignore[attr-defined]
        leases = sum(1 for _ in rt.ledger.events(AuditQuery(action="lease")))
        result = rt.ledger.verify()
        if leases != expected_leases:
            raise SystemExit(f"{home.name}: expected {expected_leases} lease events, found {leases}")
        if not result.ok:
            raise SystemExit(f"{home.name}: {result.describe()}")
        return f"OK, {result.checked:,} events ({leases:,} leases)"
    finally:
        rt.close()


def single(root: Path, n: int, cache: bool) -> Result:
    home = make_home(root, f"single-{'cache' if cache else 'nocache'}")
    start, end, lat, cpu = lease_loop(home, n, 0, cache=cache)
    label = "lease, warm cache" if cache else "lease, cache disabled (decrypt every time)"
    return Result(label, n, end - start, lat, chain=check_chain(home, n + WARMUP), cpu_s=cpu)


def raw_single(root: Path, n: int) -> Result:
    path = root / "raw-single.db"
    raw_open(path).execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    start, end, lat, cpu = raw_loop(path, n, 0)
    return Result("raw SQLite INSERT+COMMIT (WAL, synchronous=FULL)", n, end - start, lat, cpu_s=cpu)


def multi(root: Path, kind: str, n: int, procs: int) -> Result:
    ctx = mp.get_context("spawn")
    if kind == "raw":
        target = root / f"raw-multi-{time.monotonic_ns()}.db"
        raw_open(target).execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)")
    else:
        target = make_home(root, f"multi-{kind}-{time.monotonic_ns()}")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(kind, str(target), n, i, barrier, queue)) for i in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    errors = [r for r in results if r[0] == "error"]
    if errors:
        raise SystemExit(f"worker failed: {errors}")
    starts = [r[2][0] for r in results]
    ends = [r[2][1] for r in results]
    lat = [x for r in results for x in r[2][2]]
    label = {"lease": "lease, warm cache", "lease-nocache": "lease, cache disabled",
             "lease-noanchor": "diagnostic: lease, warm cache, anchor file NOT advanced (not a supported mode)",
             "raw": "raw SQLite INSERT+COMMIT (WAL, synchronous=FULL)"}[kind]
    chain = "" if kind == "raw" else check_chain(target, procs * (n + WARMUP),
                                                 anchor_skipped=kind == "lease-noanchor")
    cpu = sum(r[2][3] for r in results)
    return Result(label, procs * n, max(ends) - min(starts), lat, processes=procs, chain=chain, cpu_s=cpu)


def median_run(runs: list[Result]) -> Result:
    ordered = sorted(runs, key=lambda r: r.per_s)
    return ordered[len(ordered) // 2]


# --- report -------------------------------------------------------------------------------


def machine(tmp: Path) -> dict[str, str]:
    cpu = benchdoc.cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "CPU": cpu,
        "Cores": f"{os.cpu_count()} (usable: {usable})",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "SQLite": sqlite3.sqlite_version,
        "Temp dir filesystem": f"{tmp}: {benchdoc.filesystem_of(tmp)}",
        "Load average at start (1/5/15 min)": f"{load} (other workloads on the machine show up here)",
    }


def pragmas(root: Path) -> str:
    home = make_home(root, "pragma-check")
    rt = open_runtime(Settings(home=home))
    try:
        c = rt.db.connection()
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[c.execute("PRAGMA synchronous").fetchone()[0]]
        mode = c.execute("PRAGMA journal_mode").fetchone()[0]
        return f"journal_mode={mode}, synchronous={sync}"
    finally:
        rt.close()


def row(r: Result, note: str = "") -> str:
    return (f"| {r.processes} | {r.label} | {r.ops:,} | {r.pct(50):.3f} | {r.pct(95):.3f} | {r.pct(99):.3f} "
            f"| {r.mean_ms:.3f} | {r.cpu_ms_per_op:.3f} | {r.per_s:,.0f} | {r.chain or 'n/a'}{note} |")


def render(args: argparse.Namespace, command: str, m: dict[str, str], db_pragmas: str,
           singles: list[Result], multis: dict[str, list[Result]]) -> str:
    lease1 = singles[0]
    agg = median_run(multis["lease"])
    out = [START, "## Lease (`runlease.broker.Broker.lease`, static issuer, embedded store, durable audit)", ""]
    out += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by:", "", "```", command, "```", ""]
    out += ["| Machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in m.items()] + [""]
    out += [
        f"Store as runlease opens it: {db_pragmas}; each lease = policy check (no policy file), stage resolve "
        "(uncached, one SELECT), value from the rotation-aware cache, static issuer, redactor registration, "
        "then the lease row + its HMAC-chained audit event in one `BEGIN IMMEDIATE` transaction, then the "
        "audit anchor record advanced in place (flock + pwrite on a descriptor kept open). Three connection secrets leased in turn; "
        f"{WARMUP} warm-up leases per process not timed. Latency is per call (`perf_counter_ns`), "
        "percentiles nearest-rank. Multi-process rows: processes spawned, released together by a barrier; "
        "leases/s = all leases / (last finish - first start); latency columns pool all processes. "
        f"Multi-process figures are the median of {args.repeat} run(s) by throughput "
        f"(all runs: see below). Chain column: `ledger.verify()` after the scenario, plus the count of "
        "lease events found. CPU ms / op = process CPU time of the timed loops (all processes) / ops: "
        "less sensitive than wall time to other load on the machine.",
        "",
        "| processes | scenario | leases / ops | p50 ms | p95 ms | p99 ms | mean ms | CPU ms / op | per second "
        "| audit chain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    out += [row(r) for r in singles]
    for kind in KINDS:
        out.append(row(median_run(multis[kind])))
    out += ["", "All multi-process runs (leases/s): " + "; ".join(
        f"{median_run(multis[k]).label}: " + ", ".join(f"{r.per_s:,.0f}" for r in multis[k])
        for k in KINDS)]

    def verdict(ok: bool, detail: str) -> str:
        return f"{'met' if ok else '**not met**'} ({detail})"

    out += ["", "Targets:", ""]
    out.append(f"- p50 of `broker.lease` in one process, warm cache, <= {TARGET_P50_MS:g} ms: "
               + verdict(lease1.pct(50) <= TARGET_P50_MS, f"p50 {lease1.pct(50):.3f} ms"))
    out.append(f"- >= {TARGET_AGG_PER_S:,.0f} leases/s aggregate from {PROCESSES} processes on one home: "
               + verdict(agg.per_s >= TARGET_AGG_PER_S, f"median {agg.per_s:,.0f} leases/s; best "
                         f"{max(r.per_s for r in multis['lease']):,.0f}"))
    raw1, rawn = singles[2], median_run(multis["raw"])
    noanchor = median_run(multis["lease-noanchor"])
    out += ["", "Reading the numbers:", "",
            f"- The disk/SQLite floor for one durable commit here is p50 {raw1.pct(50):.3f} ms "
            f"({raw1.per_s:,.0f}/s in one process, {rawn.per_s:,.0f}/s from {PROCESSES} processes). "
            f"A warm-cache lease costs p50 {lease1.pct(50):.3f} ms, so about "
            f"{lease1.pct(50) - raw1.pct(50):.3f} ms per lease is runlease's own work "
            "(models, HMAC chain, stage resolve, anchor file).",
            f"- Disabling the cache moves p50 from {lease1.pct(50):.3f} to {singles[1].pct(50):.3f} ms: "
            "the DEK unwrap + AES-GCM decrypt (+ JSON decode) the cache saves.",
            f"- With {PROCESSES} processes every lease serialises on the writer turn (a blocking flock taken "
            "before SQLite's write lock, so the next writer wakes as soon as the lock frees instead of in "
            "SQLite's sleep-and-retry busy handler) and briefly on the audit anchor record (pread + pwrite under "
            f"flock). The diagnostic row (same leases, anchor not advanced) reaches {noanchor.per_s:,.0f} leases/s "
            f"against {agg.per_s:,.0f}: " + (
                f"the anchor update costs about {100 * (1 - agg.per_s / noanchor.per_s):.0f}% of the throughput. "
                if noanchor.per_s > 1.05 * agg.per_s else
                "within run-to-run noise of the full lease, so the anchor update is not the bottleneck. ") +
            "CPU time per lease (user + system): "
            f"{lease1.cpu_ms_per_op:.2f} ms in one process, {agg.cpu_ms_per_op:.2f} ms with {PROCESSES} processes "
            f"contending, {noanchor.cpu_ms_per_op:.2f} ms in the diagnostic row."]
    nocache = median_run(multis["lease-nocache"])
    if nocache.per_s > 1.1 * agg.per_s:  # only when clearly beyond run-to-run noise
        out.append(f"- With {PROCESSES} processes the cache-disabled run is the faster one ({nocache.per_s:,.0f} vs "
                   f"{agg.per_s:,.0f} leases/s): the extra decrypt work outside the locks spaces the processes' "
                   "lock requests out, so fewer of them queue and back off. Another sign that lock hand-off, "
                   "not computation, bounds the aggregate.")
    if args.quick:
        out += ["", "**--quick run: few samples; not representative.**"]
    out.append(END)
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few samples (smoke run)")
    p.add_argument("--markdown", type=Path, help="write/update the lease section of this markdown file")
    p.add_argument("--repeat", type=int, default=None, help="multi-process runs per scenario (default 3, quick 1)")
    args = p.parse_args()
    n_single, n_multi = (1_000, 300) if args.quick else (5_000, 2_000)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    command = shlex.join(["python", *sys.argv])

    with tempfile.TemporaryDirectory(prefix="runlease-bench-lease-") as tmp:
        root = Path(tmp)
        m = machine(root)
        db_pragmas = pragmas(root)
        print(f"single process: {n_single:,} leases per scenario ...", file=sys.stderr)
        singles = [single(root, n_single, cache=True), single(root, n_single, cache=False),
                   raw_single(root, n_single)]
        multis: dict[str, list[Result]] = {}
        for kind in KINDS:
            print(f"{PROCESSES} processes x {n_multi:,}: {kind} ({args.repeat} run(s)) ...", file=sys.stderr)
            multis[kind] = [multi(root, kind, n_multi, PROCESSES) for _ in range(args.repeat)]
        try:
            m["Load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        except OSError:
            pass
    section = render(args, command, m, db_pragmas, singles, multis)
    benchdoc.publish(section, args.markdown, START, END)


if __name__ == "__main__":
    main()
