"""One "machine" of the concurrency scenario: lease N times through the broker, as fast as it can.

Run as a script with RUNLEASE_* in the environment (its own home, the shared
ledger's DSN and the shared master key). It waits for a start file so all
workers begin together and really contend for the chain head.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runlease.models import RunIdentity
from runlease.runtime import open_runtime


def main(worker: str, count: int, start_file: str) -> None:
    rt = open_runtime()
    try:
        deadline = time.monotonic() + 60
        while not Path(start_file).exists():
            if time.monotonic() > deadline:
                raise SystemExit("start file never appeared")
            time.sleep(0.01)
        who = RunIdentity(orchestrator="airflow", pipeline="concurrency", run_id=f"run-{worker}", task_id="t",
                          try_number=1, principal=f"machine-{worker}")
        for _ in range(count):
            rt.broker.lease("dev/connections/warehouse", who, ttl=600)
    finally:
        rt.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
