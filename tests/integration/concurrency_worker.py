"""One worker process for test_concurrency.py (run as a script, with its own runtime).

    python concurrency_worker.py <mode> <worker-index> <count> <sync-dir>

It opens its own runtime on $RUNLEASE_HOME, signals ``ready-<i>`` in the sync
dir, waits for the ``go`` file so all workers start together, does its work,
and prints one JSON line of results. Values are deterministic per version
(``value-<name>-v<version>``), so every read can be checked against the
version the store says it came from.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from runlease.errors import ConflictError
from runlease.models import RunIdentity, SecretPath
from runlease.runtime import open_runtime

NAMES = ["warehouse", "registry", "feature_store"]


def expected(name: str, version: int) -> str:
    return f"value-{name}-v{version}"


def path(name: str) -> SecretPath:
    return SecretPath.parse(f"dev/tokens/{name}")


def wait_for_go(sync: Path, index: int) -> None:
    (sync / f"ready-{index}").touch()
    deadline = time.monotonic() + 120
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("never got the go signal")
        time.sleep(0.001)


def write_next(rt, name: str, identity: RunIdentity) -> int:
    """Check-and-set write of the next version; retried on a lost race."""
    while True:
        current = rt.store.resolve(path(name)).version
        try:
            return rt.broker.put(path(name), expected(name, current + 1), identity, cas=current)
        except ConflictError:
            continue


def main() -> None:
    mode, index, count, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    rt = open_runtime()
    identity = RunIdentity(orchestrator="airflow", pipeline="concurrency", run_id=f"run-{index}",
                           task_id=f"{mode}-{index}", try_number=1)
    result = {"mode": mode, "index": index, "leases": 0, "reads": 0, "writes": 0, "mismatches": 0, "error": None}
    wait_for_go(sync, index)
    try:
        for i in range(count):
            name = NAMES[i % len(NAMES)]
            if mode == "lease":
                op = "lease"
            elif mode == "writer":
                op = "write"
            else:  # mix: mostly leases, some reads and check-and-set writes
                op = ("lease", "lease", "read", "write")[i % 4]
            if op == "lease":
                lease = rt.broker.lease(path(name), identity, ttl=600)
                result["leases"] += 1
                result["mismatches"] += lease.value != expected(name, lease.version)
            elif op == "read":
                secret = rt.broker.read(path(name), identity)
                result["reads"] += 1
                result["mismatches"] += secret.value != expected(name, secret.version)
            else:
                write_next(rt, name, identity)
                result["writes"] += 1
    except Exception as err:  # reported, and the exit code says so
        result["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    finally:
        rt.close()
    print(json.dumps(result), flush=True)
    sys.exit(1 if result["error"] else 0)


if __name__ == "__main__":
    main()
