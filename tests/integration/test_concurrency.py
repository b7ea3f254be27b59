"""Many processes on one home at once: no lock errors, no lost or forked audit events."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.core import released_together

from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity
from runlease.runtime import Runtime

WORKER = Path(__file__).with_name("concurrency_worker.py")
NAMES = ["warehouse", "registry", "feature_store"]

pytestmark = pytest.mark.slow


def seed(rt: Runtime, admin: RunIdentity) -> None:
    for name in NAMES:
        rt.broker.put(f"dev/tokens/{name}", f"value-{name}-v1", admin)


def run_workers(rt: Runtime, tmp_path: Path, jobs: list[tuple[str, int]]) -> list[dict]:
    """Start one process per (mode, count), release them together, collect their JSON results."""
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    env["RUNLEASE_HOME"] = str(rt.settings.home)
    argvs = [[sys.executable, str(WORKER), mode, str(i), str(count), str(sync)] for i, (mode, count) in enumerate(jobs)]
    with released_together(argvs, sync, env) as procs:
        outputs = [p.communicate(timeout=300) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert "database is locked" not in err and "database is locked" not in out
        assert p.returncode == 0, f"worker failed:\n{err}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def lease_rows(rt: Runtime) -> int:
    return rt.db.connection().execute("SELECT count(*) FROM leases").fetchone()[0]


def action_counts(rt: Runtime) -> Counter:
    return Counter(e.action for e in rt.ledger.events(AuditQuery()))


def test_four_processes_lease_at_once(runtime: Runtime, admin: RunIdentity, tmp_path: Path) -> None:
    seed(runtime, admin)
    results = run_workers(runtime, tmp_path, [("lease", 500)] * 4 + [("writer", 60)])
    assert [r["error"] for r in results] == [None] * 5
    assert sum(r["leases"] for r in results) == 2000
    assert sum(r["mismatches"] for r in results) == 0
    assert len(list(runtime.ledger.events(AuditQuery(action="lease")))) == 2000
    assert lease_rows(runtime) == 2000
    for i in range(4):
        assert len(runtime.ledger.find_leases(run_id=f"run-{i}")) == 500
    # Every write landed exactly once: 1 seed + 60 versions spread over the three secrets.
    assert sum(runtime.store.info(runtime.broker.path(f"dev/tokens/{n}")).versions for n in NAMES) == 3 + 60
    assert action_counts(runtime) == Counter({"lease": 2000, "write": 63})
    result = runtime.ledger.verify()
    assert result.ok, result.describe()
    assert result.checked == 2063
    # seq is dense and unique: no forked or lost events.
    seqs = [e.seq for e in runtime.ledger.events(AuditQuery())]
    assert seqs == list(range(1, 2064))


def test_read_write_lease_mix(runtime: Runtime, admin: RunIdentity, tmp_path: Path) -> None:
    seed(runtime, admin)
    results = run_workers(runtime, tmp_path, [("mix", 400)] * 4)
    assert [r["error"] for r in results] == [None] * 4
    assert sum(r["mismatches"] for r in results) == 0
    leases = sum(r["leases"] for r in results)
    reads = sum(r["reads"] for r in results)
    writes = sum(r["writes"] for r in results)
    assert (leases, reads, writes) == (800, 400, 400)
    assert action_counts(runtime) == Counter({"lease": leases, "read": reads, "write": writes + 3})
    assert lease_rows(runtime) == leases
    # Check-and-set writes from four processes never lost an update: the versions are dense.
    total = 0
    for name in NAMES:
        p = runtime.broker.path(f"dev/tokens/{name}")
        history = runtime.store.history(p)
        assert [h.version for h in history] == list(range(1, len(history) + 1))
        assert runtime.store.get(p).value == f"value-{name}-v{len(history)}"
        total += len(history)
    assert total == writes + 3
    result = runtime.ledger.verify()
    assert result.ok, result.describe()


def test_verify_while_other_processes_append(runtime: Runtime, admin: RunIdentity, tmp_path: Path) -> None:
    """verify() reads the anchor before its snapshot, so a concurrent append never looks like truncation."""
    seed(runtime, admin)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    env["RUNLEASE_HOME"] = str(runtime.settings.home)
    argvs = [[sys.executable, str(WORKER), "lease", str(i), "400", str(sync)] for i in range(2)]
    with released_together(argvs, sync, env) as procs:
        checks = []
        while any(p.poll() is None for p in procs) or not checks:
            result = runtime.ledger.verify()
            assert result.ok, result.describe()
            checks.append(result.checked)
        outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert checks == sorted(checks)  # the verified log only ever grows
    final = runtime.ledger.verify()
    assert final.ok and final.checked == 3 + 800


def test_threads_share_one_broker(runtime: Runtime, admin: RunIdentity) -> None:
    """Per-thread SQLite connections: many threads leasing through one broker at once."""
    from concurrent.futures import ThreadPoolExecutor

    seed(runtime, admin)

    def work(t: int) -> int:
        who = RunIdentity(orchestrator="airflow", pipeline="threads", run_id=f"t-{t}", task_id="x", try_number=1)
        for i in range(100):
            lease = runtime.broker.lease(f"dev/tokens/{NAMES[i % 3]}", who)
            assert lease.value == f"value-{NAMES[i % 3]}-v1"
        runtime.db.close()  # this thread's connection
        return 100

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(work, range(8))) == 800
    assert lease_rows(runtime) == 800
    assert len(list(runtime.ledger.events(AuditQuery(action="lease")))) == 800
    assert runtime.ledger.verify().ok


INIT_CODE = """
import sys, time
from pathlib import Path
from runlease.runtime import init_home
from runlease.models import RunIdentity
sync = Path(sys.argv[1]); i = sys.argv[2]
(sync / f"ready-{i}").touch()
while not (sync / "go").exists():
    time.sleep(0.001)
rt, created = init_home()
rt.broker.put(f"dev/tokens/from_{i}", f"value-from-{i}", RunIdentity(orchestrator="cli", pipeline="init"))
print(created, rt.keyring.active_id)
rt.close()
"""


def test_concurrent_init_home_agrees_on_one_key(tmp_path: Path) -> None:
    """Four processes initializing the same fresh home at once: one key, one schema, nothing lost."""
    from runlease.runtime import open_runtime
    from runlease.settings import Settings

    home, sync = tmp_path / "home", tmp_path / "sync"
    sync.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    env["RUNLEASE_HOME"] = str(home)
    argvs = [[sys.executable, "-c", INIT_CODE, str(sync), str(i)] for i in range(4)]
    with released_together(argvs, sync, env) as procs:
        outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    lines = [out.split() for out, _ in outputs]
    assert sorted(created for created, _ in lines) == ["False", "False", "False", "True"]
    assert len({kid for _, kid in lines}) == 1
    rt = open_runtime(Settings(home=home))
    try:
        assert rt.keyring.active_id == lines[0][1]
        for i in range(4):
            assert rt.store.get(rt.broker.path(f"dev/tokens/from_{i}")).value == f"value-from-{i}"
        assert rt.ledger.verify().ok
    finally:
        rt.close()
    assert not list(home.glob("*.tmp"))
