"""The aws-sts issuer against moto's server over HTTP: AssumeRole naming, tags, duration, errors.

What moto can and cannot prove: it answers AssumeRole and GetCallerIdentity
like STS (the leased keys resolve to ``assumed-role/<role>/<session>``, the
expiration follows DurationSeconds), and its recorder shows the raw request
(tags, session name). It does not evaluate IAM policies, so nothing here
claims the role's permissions are enforced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runlease.errors import BackendError, ConfigError
from runlease.issuers.aws_sts import clamp_duration, role_session_name
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, utcnow
from runlease.runtime import Runtime
from support.homes import identity, make_runtime, raw_files
from support.moto_server import ACCOUNT, MotoServer

PATH = SecretPath.parse("dev/connections/aws_etl")
ROLE = "etl-runner"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
BASE_SECRET = "Base-Secret-Key-that-must-not-leak-0123456789"  # runlease: allow high-entropy-secret (test fixture)


def base_connection(endpoint: str) -> dict[str, object]:
    return {"conn_type": "aws", "login": "AKIAIOSFODNN7EXAMPLE", "password": BASE_SECRET,
            "extra": {"region_name": "eu-west-1", "endpoint_url": endpoint}}


@pytest.fixture
def aws(moto_server: MotoServer, tmp_path: Path) -> Iterator[Runtime]:
    moto_server.reset()
    iam = boto3.client("iam", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT},
                                                      "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=43200)
    rt = make_runtime(tmp_path / "home")
    rt.broker.put(PATH, base_connection(moto_server.endpoint), identity())
    rt.store.update_metadata(PATH, {"issuer": "aws-sts", "role_arn": ROLE_ARN})
    try:
        yield rt
    finally:
        rt.close()


def test_lease_is_an_airflow_aws_connection_for_an_assumed_role_session(aws: Runtime, moto_server: MotoServer) -> None:
    who = identity(run_id="scheduled__2024-05-01T00:00:00+00:00", task_id="extract", pipeline="warehouse_daily")
    moto_server.start_recording()
    lease = aws.broker.lease(PATH, who, ttl=1800)
    calls = [c for c in moto_server.recorded() if c["params"].get("Action") == "AssumeRole"]
    cred = lease.value
    assert cred["conn_type"] == "aws" and cred["login"].startswith("ASIA")
    assert cred["password"] and cred["extra"]["aws_session_token"] and cred["extra"]["region_name"] == "eu-west-1"
    assert cred["extra"]["endpoint_url"] == moto_server.endpoint

    # The leased keys act as the assumed role, in a session named after the run.
    sts = boto3.client("sts", endpoint_url=moto_server.endpoint, region_name="eu-west-1",
                       aws_access_key_id=cred["login"], aws_secret_access_key=cred["password"],
                       aws_session_token=cred["extra"]["aws_session_token"])
    arn = sts.get_caller_identity()["Arn"]
    session = "warehouse_daily.extract.scheduled__2024-05-01T00-00-00+00-00"
    assert arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{session}"

    # What went over the wire: RoleSessionName, DurationSeconds = TTL, session tags dag/run/task/lease.
    assert len(calls) == 1
    params = calls[0]["params"]
    assert params["RoleArn"] == ROLE_ARN and params["RoleSessionName"] == session
    assert params["DurationSeconds"] == "1800"
    tags = {params[f"Tags.member.{i}.Key"]: params[f"Tags.member.{i}.Value"] for i in range(1, 5)}
    assert tags == {"dag": "warehouse_daily", "run": "scheduled__2024-05-01T00:00:00+00:00", "task": "extract",
                    "lease": lease.lease_id}
    assert BASE_SECRET not in json.dumps(calls)  # signed requests carry a signature, never the key

    expiration = cred["extra"]["expiration"]
    assert abs((lease.expires_at - utcnow()).total_seconds() - 1800) < 120
    assert lease.issuer_state["session_name"] == session and lease.issuer_state["duration_s"] == 1800
    assert lease.issuer_state["access_key_id"] == cred["login"] and expiration


def test_short_ttl_is_clamped_to_900_seconds_with_a_warning(aws: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="runlease.issuers.aws_sts")
    lease = aws.broker.lease(PATH, identity(), ttl=60)
    assert lease.issuer_state["duration_s"] == 900
    assert "outside STS's 900..43200" in caplog.text
    # STS's credentials live 900 s; the lease (and the TTL sweep) still ends at the asked 60 s.
    expiration = lease.value["extra"]["expiration"]
    from datetime import datetime

    assert (datetime.fromisoformat(expiration) - lease.issued_at) > timedelta(seconds=800)
    assert (lease.expires_at - lease.issued_at) <= timedelta(seconds=60)


def test_duration_clamp_bounds() -> None:
    assert clamp_duration(timedelta(seconds=1)) == 900
    assert clamp_duration(timedelta(hours=2)) == 7200
    assert clamp_duration(timedelta(hours=20)) == 43200


@settings(max_examples=200, deadline=None)
@given(pipeline=st.text(min_size=1, max_size=250), task=st.text(min_size=1, max_size=250),
       run=st.text(min_size=1, max_size=250))
def test_role_session_names_always_fit_aws_rules(pipeline: str, task: str, run: str) -> None:
    name = role_session_name(RunIdentity(orchestrator="kfp", pipeline=pipeline, task_id=task, run_id=run))
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", name, flags=re.ASCII)


def test_long_run_ids_keep_distinct_session_names() -> None:
    base = "x" * 80
    a = role_session_name(RunIdentity(orchestrator="airflow", pipeline="p", task_id="t", run_id=base + "a"))
    b = role_session_name(RunIdentity(orchestrator="airflow", pipeline="p", task_id="t", run_id=base + "b"))
    assert len(a) == len(b) == 64 and a != b


def test_revoke_ends_the_lease_and_says_sts_sessions_cannot_be_cut_short(
    aws: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runlease.issuers.aws_sts")
    lease = aws.broker.lease(PATH, identity(run_id="r-revoke"), ttl=900)
    assert aws.broker.revoke_run("r-revoke") == 1
    assert "cannot be ended early" in caplog.text
    assert aws.ledger.get_lease(lease.lease_id).state.value == "revoked"


def test_secrets_stay_out_of_ledger_audit_and_debug_logs(
    aws: Runtime, moto_server: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore at DEBUG logs response bodies and request headers; none of it may carry a secret."""
    base_token = "Base-Session-Token-that-must-not-leak-" + "q" * 40
    conn = base_connection(moto_server.endpoint)
    conn["extra"]["aws_session_token"] = base_token  # type: ignore[index]
    aws.broker.put(PATH, conn, identity())
    caplog.set_level(logging.DEBUG)
    lease = aws.broker.lease(PATH, identity(), ttl=900)
    secret, token = lease.value["password"], lease.value["extra"]["aws_session_token"]
    aws.broker.revoke(lease.lease_id)
    assert "AssumeRole" in caplog.text  # botocore really was logging at DEBUG
    stored = json.dumps(aws.ledger.get_lease(lease.lease_id).model_dump(mode="json"))
    events = "".join(e.model_dump_json() for e in aws.ledger.events(AuditQuery()))
    store_bytes = raw_files(aws.settings.home)
    for value in (secret, token, BASE_SECRET, base_token):
        assert value not in stored and value not in events and value not in caplog.text
        assert value.encode() not in store_bytes  # the base credentials are stored, but only as ciphertext


def test_missing_or_malformed_role_arn_is_a_clear_error(aws: Runtime) -> None:
    aws.store.update_metadata(PATH, {"role_arn": "not-an-arn"})
    with pytest.raises(ConfigError, match="dev/connections/aws_etl.*role_arn"):
        aws.broker.lease(PATH, identity())


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_unreachable_sts_is_a_bounded_clear_error_without_secrets(
    aws: Runtime, failure: str, closed_port: int, silent_server: int
) -> None:
    port = closed_port if failure == "refused" else silent_server
    endpoint = f"http://127.0.0.1:{port}"
    aws.broker.put(PATH, base_connection(endpoint), identity())
    aws.store.update_metadata(PATH, {"connect_timeout": 1, "read_timeout": 1})
    with pytest.raises(BackendError) as info:
        aws.broker.lease(PATH, identity())
    message = str(info.value)
    assert f"AWS STS at {endpoint}" in message
    assert BASE_SECRET not in message
    assert aws.ledger.find_leases() == []


def test_sts_refusal_names_the_role_and_the_reason(aws: Runtime, moto_server: MotoServer) -> None:
    aws.store.update_metadata(PATH, {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"})
    conn = base_connection(moto_server.endpoint)
    aws.broker.put(PATH, conn, identity())
    # moto validates the session name length like STS does: force a refusal through a 65-char name.
    from runlease.issuers import aws_sts

    original = aws_sts.role_session_name
    aws_sts.role_session_name = lambda _identity: "n" * 65  # type: ignore[assignment]
    try:
        with pytest.raises(BackendError, match=f"refused AssumeRole on {re.escape(ROLE_ARN)}: ValidationError"):
            aws.broker.lease(PATH, identity())
    finally:
        aws_sts.role_session_name = original
