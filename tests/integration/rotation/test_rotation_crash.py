"""Crash at every step: kill -9 the rotating process right after each step, resume, finish.

For each rotator and each step, a worker process rotates the secret and
SIGKILLs itself at one point: right after the step's effect on the target
(nothing of the step committed yet), right after the step's store effect
inside its commit (create, finish, retire: the new version / the label
moves, before the state record and audit event), or right after the commit.
Then, in this process: CURRENT must still work in the target, the
rotation must resume under the same token to the end (retired) -- or, where
the kill rolled back every step so far (the token rotator on the local
store commits its offline steps together), start over -- exactly
one new version must exist (no second PENDING), the new credential must
work and the old one must not, and the audit chain must still verify.

``token@aws-store`` runs the token rotator with runlease's *AWS* store (moto):
there a step's stage moves, state record and audit event are separate calls,
not one SQLite transaction, so this is where "adopt the PENDING this token
staged" and "finish from wherever the labels are" are exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import sys
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import Stage
from runlease.rotation import RotationEngine, Status
from support.homes import make_runtime
from support.postgres import PostgresServer

from rotation_support import ADMIN, Target, iam_target, postgres_target, sm_target, token_target

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("crash_worker.py")
STEPS = ["create", "set", "test", "finish", "retire"]
POINTS = ["effect", "commit"]
ROTATORS = ["token", "postgres", "aws-iam-key", "aws-secretsmanager", "token@aws-store"]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def crash_db(request: pytest.FixtureRequest) -> str:
    """One database for every postgres crash case (each case has its own roles)."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database("crash")


def store_settings(request: pytest.FixtureRequest, rotator: str) -> dict[str, object]:
    """Settings (and so worker environment) for the runlease store the case uses."""
    if rotator != "token@aws-store":
        return {}
    endpoint = request.getfixturevalue("moto_server").endpoint
    return {"store": "aws", "store_options": {"region": "us-east-1", "endpoint_url": endpoint, "max_attempts": 2,
                                              "prefix": f"rlcrash-{uuid.uuid4().hex[:10]}/"}}


def make_target(request: pytest.FixtureRequest, rt, rotator: str) -> Target:
    if rotator.startswith("token"):
        return token_target(rt)
    if rotator == "postgres":
        return postgres_target(rt, request.getfixturevalue("postgres_server"), request.getfixturevalue("crash_db"))
    endpoint = request.getfixturevalue("moto_server").endpoint
    return iam_target(rt, endpoint) if rotator == "aws-iam-key" else sm_target(rt, endpoint)


def crash(home: Path, path: str, point: str, step: str, settings: dict[str, object]) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLEASE_", "AWS_"))}
    if settings:
        env.update(FAKE_AWS, RUNLEASE_STORE=str(settings["store"]),
                   RUNLEASE_STORE_OPTIONS=json.dumps(settings["store_options"]))
    proc = subprocess.run([sys.executable, str(WORKER), str(home), path, point, step], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (-9, 3), proc.stderr[-3000:]
    return proc.returncode


CASES = [(step, point) for step in STEPS for point in POINTS] + [
    (step, "store") for step in ("create", "finish", "retire")]


@pytest.mark.parametrize(("step", "point"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
@pytest.mark.parametrize("rotator", ROTATORS)
def test_kill_after_a_step_then_resume(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       rotator: str, step: str, point: str) -> None:
    settings = store_settings(request, rotator)
    for name, value in (FAKE_AWS.items() if settings else ()):
        monkeypatch.setenv(name, value)
    rt = make_runtime(tmp_path / "home", **settings)
    try:
        target = make_target(request, rt, rotator)
        original = rt.store.get(target.path).value
        assert crash(tmp_path / "home", str(target.path), point, step, settings) == -9, "never reached the point"
        engine = RotationEngine(rt.broker)
        # None: the kill rolled back a group of steps that commit together, claim included (the
        # token rotator's offline steps on the local store); resuming then means starting over.
        crashed = engine.state(target.path)
        assert target.works(rt.store.get(target.path).value), "CURRENT must work right after the crash"

        state = crashed
        if state is None or state.status is Status.ROTATING:
            state = engine.rotate(target.path, ADMIN, token=state.token if state else None)
        if state.status is Status.GRACE:
            state = engine.retire(target.path, ADMIN)

        assert state.status is Status.DONE
        if crashed is not None:
            assert state.token == crashed.token  # resumed, not restarted
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
        creates = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.detail["step"] == "create"]
        adopted = [e.detail.get("adopted", False) for e in creates]
        # Only a remote store can hold a staged version whose state record never got written: then
        # the resumed create adopts it. On the local store that crash rolled the version back.
        assert adopted == ([True] if (rotator, step, point) == ("token@aws-store", "create", "store") else [False])
        assert rt.ledger.verify().ok
    finally:
        rt.close()
