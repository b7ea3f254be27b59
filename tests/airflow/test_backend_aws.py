"""RunleaseBackend on the AWS store (moto's server over HTTP): validation before leasing, requests per lookup.

Requests are counted by :mod:`support.aws_fault_proxy` (a proxy on 127.0.0.1
in front of moto that logs each action), which also denies STS AssumeRole for
the audited-issuance case -- moto cannot refuse one action on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runlease.errors import InvalidValueError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity
from runlease.runtime import init_home
from runlease.settings import Settings
from support.aws_fault_proxy import FaultProxy, fault_proxy
from support.moto_server import ACCOUNT, MotoServer

from runlease_airflow.secrets import RunleaseBackend

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
PASSWORD = "Aws-backend-pass-9931"  # runlease: allow high-entropy-secret (test fixture)
WAREHOUSE = {"conn_type": "postgres", "host": "wh.internal", "login": "etl", "password": PASSWORD, "port": 5432}
TASK_ENV = {"AIRFLOW_CTX_DAG_ID": "training_pipeline", "AIRFLOW_CTX_DAG_RUN_ID": "manual__r1",
            "AIRFLOW_CTX_TASK_ID": "train_model", "AIRFLOW_CTX_TRY_NUMBER": "1"}


@pytest.fixture()
def proxy(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
        monkeypatch.delenv(key, raising=False)
    with fault_proxy(moto_server.endpoint) as p:
        yield p


@pytest.fixture()
def kwargs(tmp_path: Path, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    for name in ("RUNLEASE_HOME", "RUNLEASE_ENV", "RUNLEASE_MASTER_KEY", "RUNLEASE_STORE", "RUNLEASE_POLICY_FILE",
                 *TASK_ENV):
        monkeypatch.delenv(name, raising=False)
    options = {"region": "us-east-1", "endpoint_url": proxy.url, "prefix": f"rl-{tmp_path.name[-12:]}/",
               "max_attempts": 1}
    runtime, _ = init_home(Settings(home=tmp_path / "home", store="aws", store_options=options))
    runtime.broker.put("dev/connections/warehouse", WAREHOUSE, ADMIN)
    runtime.broker.put("dev/connections/bad_port", {**WAREHOUSE, "port": "abc"}, ADMIN)
    runtime.broker.put("dev/connections/bad_uri", "postgres://etl:" + PASSWORD + "@wh:notaport/db", ADMIN)
    runtime.close()
    return {"home": str(tmp_path / "home"), "store": "aws", "store_options": json.dumps(options)}


def in_task(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TASK_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("conn_id", ["bad_port", "bad_uri"])
def test_a_malformed_connection_is_refused_before_any_lease(
    kwargs: dict[str, object], monkeypatch: pytest.MonkeyPatch, conn_id: str
) -> None:
    backend = RunleaseBackend(**kwargs)
    in_task(monkeypatch)
    with pytest.raises(InvalidValueError) as caught:
        backend.get_connection(conn_id)
    message = str(caught.value)
    assert f"'{conn_id}'" in message and f"dev/connections/{conn_id}" in message and "port" in message
    assert PASSWORD not in message and "abc" not in message
    ledger = backend.state.runtime.ledger
    assert not list(ledger.find_leases(state=LeaseState.ACTIVE))
    assert not [e for e in ledger.events(AuditQuery(action="lease"))]


def test_requests_per_lookup_in_and_outside_a_task(
    kwargs: dict[str, object], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RunleaseBackend(**kwargs)
    proxy.taken()
    assert backend.get_connection("warehouse").password == PASSWORD  # outside a task: an audited read
    assert proxy.taken() == ["GetSecretValue", "DescribeSecret"]  # first lookup: the tags once
    backend.get_connection("warehouse")
    assert proxy.taken() == ["GetSecretValue"]
    in_task(monkeypatch)
    backend.get_connection("warehouse")  # the first lease in this try
    assert proxy.taken() == ["GetSecretValue"]
    backend.get_connection("warehouse")  # the try's own lease, from the lease cache (CURRENT re-checked)
    assert proxy.taken() == ["DescribeSecret"]
    uncached = RunleaseBackend(**kwargs, cache=False)
    uncached.get_connection("warehouse")
    proxy.taken()
    uncached.get_connection("warehouse")
    assert proxy.taken() == ["GetSecretValue"]
    assert uncached.get_connection("nosuch") is None  # not held: falls through to the next backend


def test_a_refused_sts_issuance_is_audited(
    kwargs: dict[str, object], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RunleaseBackend(**kwargs)
    base = {"conn_type": "aws", "login": "AKIAIOSFODNN7EXAMPLE", "password": PASSWORD,
            "extra": {"region_name": "us-east-1", "endpoint_url": proxy.url}}
    backend.broker.put("dev/connections/aws_etl", base, ADMIN,
                       metadata={"issuer": "aws-sts", "role_arn": f"arn:aws:iam::{ACCOUNT}:role/etl"})
    proxy.deny = {"AssumeRole"}
    in_task(monkeypatch)
    with pytest.raises(Exception) as caught:
        backend.get_connection("aws_etl")
    assert PASSWORD not in str(caught.value)
    failed = [e for e in backend.state.runtime.ledger.events(AuditQuery(action="lease"))
              if e.outcome.value == "error"]
    assert len(failed) == 1 and failed[0].path == "dev/connections/aws_etl"
    assert failed[0].detail["issuer"] == "aws-sts" and failed[0].task_id == "train_model"
