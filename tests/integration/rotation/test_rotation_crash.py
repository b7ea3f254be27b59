"""Crash at every step: kill -9 the rotating process right after each step, resume, finish.

For each rotator and each step, a worker process rotates the secret and
SIGKILLs itself at one of two points: right after the step's effect on the
target (nothing of the step committed yet) and right after the step's
commit. Then, in this process: CURRENT must still work in the target, the
rotation must resume under the same token to the end (retired), exactly
one new version must exist (no second PENDING), the new credential must
work and the old one must not, and the audit chain must still verify.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runlease.models import Stage
from runlease.rotation import RotationEngine, Status
from support.homes import make_runtime
from support.postgres import PostgresServer

from rotation_support import ADMIN, Target, iam_target, postgres_target, sm_target, token_target

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("crash_worker.py")
STEPS = ["create", "set", "test", "finish", "retire"]
POINTS = ["effect", "commit"]
ROTATORS = ["token", "postgres", "aws-iam-key", "aws-secretsmanager"]


@pytest.fixture(scope="module")
def crash_db(request: pytest.FixtureRequest) -> str:
    """One database for every postgres crash case (each case has its own roles)."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database("crash")


def make_target(request: pytest.FixtureRequest, rt, rotator: str) -> Target:
    if rotator == "token":
        return token_target(rt)
    if rotator == "postgres":
        return postgres_target(rt, request.getfixturevalue("postgres_server"), request.getfixturevalue("crash_db"))
    endpoint = request.getfixturevalue("moto_server").endpoint
    return iam_target(rt, endpoint) if rotator == "aws-iam-key" else sm_target(rt, endpoint)


def crash(home: Path, path: str, point: str, step: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    proc = subprocess.run([sys.executable, str(WORKER), str(home), path, point, step], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (-9, 3), proc.stderr[-3000:]
    return proc.returncode


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("rotator", ROTATORS)
def test_kill_after_a_step_then_resume(request: pytest.FixtureRequest, tmp_path: Path, rotator: str, step: str,
                                       point: str) -> None:
    rt = make_runtime(tmp_path / "home")
    try:
        target = make_target(request, rt, rotator)
        original = rt.store.get(target.path).value
        assert crash(tmp_path / "home", str(target.path), point, step) == -9, "the worker never reached the point"
        engine = RotationEngine(rt.broker)
        crashed = engine.state(target.path)
        assert target.works(rt.store.get(target.path).value), "CURRENT must work right after the crash"

        state = crashed
        if state.status is Status.ROTATING:
            state = engine.rotate(target.path, ADMIN, token=state.token)
        if state.status is Status.GRACE:
            state = engine.retire(target.path, ADMIN)

        assert (state.status, state.token) == (Status.DONE, crashed.token)
        assert [v.version for v in rt.store.history(target.path)] == [1, 2]  # one new version, never two
        assert rt.store.info(target.path).stages == {Stage.CURRENT: 2}
        new = rt.store.get(target.path).value
        assert target.works(new) and not target.works(original)
        if rotator == "aws-iam-key":  # an orphan key from a crashed create was cleaned up
            keys = target.extra["iam"].list_access_keys(UserName=target.extra["user"])["AccessKeyMetadata"]
            assert [k["AccessKeyId"] for k in keys] == [new["login"]]
        if rotator == "aws-secretsmanager":
            stages = target.extra["sm"].describe_secret(SecretId=target.extra["secret_id"])["VersionIdsToStages"]
            assert sorted(s for labels in stages.values() for s in labels) == ["AWSCURRENT"]
        assert rt.ledger.verify().ok
    finally:
        rt.close()
