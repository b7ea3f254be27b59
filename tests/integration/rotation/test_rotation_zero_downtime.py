"""Zero downtime: four reader processes keep authenticating while rotations run back to back.

Readers re-read CURRENT every few attempts and otherwise reuse what they
have; the rotations run one after another, each retired as soon as its grace
period is over, which is when the next one may start. Not one
authentication may fail, and the readers must have used several versions
(so the test cannot pass by reading once before the first rotation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runlease.rotation import RotationEngine, Status
from support.homes import make_runtime
from support.postgres import PostgresServer

from rotation_support import ADMIN, Target, postgres_target, token_target

pytestmark = pytest.mark.slow

READER = Path(__file__).with_name("reader_worker.py")
READERS = 4
ROTATIONS = 3
GRACE_S = 2


def run_with_readers(home: Path, target: Target, mode: str, rt) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    stop = home.parent / "stop"
    files = [(home.parent / f"reader{i}.json", home.parent / f"ready{i}") for i in range(READERS)]
    procs = [subprocess.Popen([sys.executable, str(READER), str(home), str(target.path), mode, str(out),
                               str(ready), str(stop)], env=env, stderr=subprocess.PIPE)
             for out, ready in files]
    try:
        deadline = time.monotonic() + 90
        while not all(ready.exists() for _, ready in files):
            assert time.monotonic() < deadline, "readers did not start authenticating"
            assert all(p.poll() is None for p in procs), "a reader exited early"
            time.sleep(0.05)
        engine = RotationEngine(rt.broker)
        for _ in range(ROTATIONS):
            state = engine.rotate(target.path, ADMIN)
            assert state.status is Status.GRACE
            time.sleep(GRACE_S + 0.2)  # readers keep going on CURRENT or PREVIOUS meanwhile
            assert engine.retire(target.path, ADMIN).status is Status.DONE
        time.sleep(0.5)
    finally:
        stop.touch()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    return [json.loads(out.read_text()) for out, _ in files]


def check(results: list[dict]) -> None:
    assert [r["failed"] for r in results] == [0] * READERS, results
    assert all(r["ok"] > 0 for r in results)
    assert all(len(r["versions"]) >= 2 for r in results), results  # each reader crossed a rotation
    assert len({v for r in results for v in r["versions"]}) >= ROTATIONS  # and together they saw most


def test_token_clients_never_fail_verification(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path / "home")
    try:
        target = token_target(rt, grace_s=GRACE_S)
        check(run_with_readers(tmp_path / "home", target, "token", rt))
    finally:
        rt.close()


def test_postgres_clients_never_fail_a_login(tmp_path: Path, postgres_server: PostgresServer,
                                             pg_database: str) -> None:
    rt = make_runtime(tmp_path / "home")
    try:
        target = postgres_target(rt, postgres_server, pg_database, grace_s=GRACE_S)
        check(run_with_readers(tmp_path / "home", target, "postgres", rt))
    finally:
        rt.close()
