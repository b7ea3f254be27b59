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
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings
from support.aws_fault_proxy import FaultProxy, fault_proxy
from support.moto_server import ACCOUNT, MotoServer

from runlease_airflow.secrets import RunleaseBackend

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
PASSWORD = "Aws-backend-pass-9931"  # runlease: allow secret-assignment (test fixture)
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
    assert proxy.taken() == ["GetSecretValue"]  # first lookup: the settings come sealed with the value
    backend.get_connection("warehouse")
    assert proxy.taken() == ["GetSecretValue"]
    in_task(monkeypatch)
    backend.get_connection("warehouse")  # the first lease in this try
    assert proxy.taken() == ["GetSecretValue"]
    backend.get_connection("warehouse")  # the try's own lease, from the lease cache (CURRENT re-checked)
    assert proxy.taken() == ["GetSecretValue"]  # the request Airflow's backend makes, not a DescribeSecret
    uncached = RunleaseBackend(**kwargs, cache=False)
    uncached.get_connection("warehouse")
    proxy.taken()
    uncached.get_connection("warehouse")
    assert proxy.taken() == ["GetSecretValue"]
    assert uncached.get_connection("nosuch") is None  # not held: falls through to the next backend


def test_the_lease_cache_sees_a_rotation_and_a_delete_through_its_one_request(
    kwargs: dict[str, object], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revalidation is one GetSecretValue of CURRENT: a new CURRENT is leased anew, a soft-deleted
    secret is served to nobody -- the answers ``resolve`` (a DescribeSecret) gave before."""
    backend = RunleaseBackend(**kwargs)
    in_task(monkeypatch)
    assert backend.get_connection("warehouse").password == PASSWORD
    rotated = "Aws-backend-rotated-4410"  # runlease: allow secret-assignment (test fixture)
    admin = open_runtime(Settings(home=Path(str(kwargs["home"])), store="aws",
                                  store_options=json.loads(str(kwargs["store_options"]))))
    try:
        admin.broker.put("dev/connections/warehouse", {**WAREHOUSE, "password": rotated}, ADMIN)
        assert backend.get_connection("warehouse").password == rotated
        assert len(backend.broker.ledger.find_leases(state=LeaseState.ACTIVE)) == 2
        admin.broker.delete("dev/connections/warehouse", ADMIN)
    finally:
        admin.close()
    proxy.taken()
    assert backend.get_connection("warehouse") is None  # deleted: not served from the cache, falls through
    assert "GetSecretValue" in proxy.taken()


def test_first_lookup_in_a_task_is_one_request(
    kwargs: dict[str, object], proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process (its own home, nothing cached) leasing in a task: as many requests as Airflow's backend."""
    backend = RunleaseBackend(**kwargs)
    in_task(monkeypatch)
    proxy.taken()
    assert backend.get_connection("warehouse").password == PASSWORD
    assert proxy.taken() == ["GetSecretValue"]
    (lease,) = backend.state.runtime.ledger.find_leases(state=LeaseState.ACTIVE)
    assert (lease.issuer, lease.version) == ("static", 1)


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


# --- secrets written for Airflow's own SecretsManagerBackend -------------------------------------

LEGACY_JSON = {"user": "etl", "pass": PASSWORD, "server": "db.legacy", "port": "5432", "database": "shop",
               "engine": "postgres", "extra": {"sslmode": "require"}}


@pytest.fixture()
def airflow_layout(proxy: FaultProxy, moto_server: MotoServer, tmp_path: Path) -> dict[str, object]:
    """Secrets as a team using Airflow's SecretsManagerBackend wrote them (boto3, straight into moto)."""
    import boto3

    root = f"af-{tmp_path.name[-12:]}"
    sm = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_server.endpoint)
    sm.create_secret(Name=f"{root}/connections/legacy_uri",
                     SecretString=f"mysql://app:{PASSWORD}@db.legacy:3306/shop")  # runlease: allow connection-uri-credentials (test fixture)
    sm.create_secret(Name=f"{root}/connections/legacy_json", SecretString=json.dumps(LEGACY_JSON))
    sm.create_secret(Name=f"{root}/connections/custom_words",
                     SecretString=json.dumps({"usr": "svc", "password": PASSWORD, "host": "h", "conn_type": "http"}))
    sm.create_secret(Name=f"{root}/connections/legacy_bad_port",
                     SecretString=json.dumps({**LEGACY_JSON, "port": "abc"}))
    sm.create_secret(Name=f"{root}/variables/threshold", SecretString="0.7")
    return {"connections_prefix": f"{root}/connections/", "variables_prefix": f"{root}/variables",
            "config_prefix": None, "extra_conn_words": {"login": ["usr"]}}


def _airflow_backend(layout: dict[str, object], endpoint: str):  # type: ignore[no-untyped-def]
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    return SecretsManagerBackend(**{k: v for k, v in layout.items() if v is not None or k == "config_prefix"},
                                 region_name="us-east-1", endpoint_url=endpoint)


def test_airflow_layout_is_opt_in(kwargs: dict[str, object], airflow_layout: dict[str, object]) -> None:
    assert RunleaseBackend(**kwargs).get_connection("legacy_uri") is None


@pytest.mark.parametrize("conn_id", ["legacy_uri", "legacy_json", "custom_words"])
def test_airflow_layout_reads_what_airflows_backend_reads(
    kwargs: dict[str, object], airflow_layout: dict[str, object], moto_server: MotoServer, conn_id: str
) -> None:
    ours = RunleaseBackend(**kwargs, aws_secrets_manager=airflow_layout).get_connection(conn_id)
    theirs = _airflow_backend(airflow_layout, moto_server.endpoint).get_connection(conn_id)
    fields = ("conn_type", "host", "login", "password", "schema", "port")
    assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert ours.extra_dejson == theirs.extra_dejson


def test_airflow_layout_is_leased_audited_and_masked_like_any_secret(
    kwargs: dict[str, object], airflow_layout: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RunleaseBackend(**kwargs, aws_secrets_manager=json.dumps(airflow_layout))
    assert backend.get_variable("threshold") == "0.7"  # outside a task: an audited read
    in_task(monkeypatch)
    conn = backend.get_connection("LEGACY_JSON".lower())
    assert (conn.login, conn.host, conn.port, conn.schema) == ("etl", "db.legacy", 5432, "shop")
    backend.get_connection("legacy_json")  # the try's lease again, from the lease cache
    ledger = backend.state.runtime.ledger
    leases = list(ledger.find_leases(state=LeaseState.ACTIVE))
    assert [(str(lease.path), lease.version, lease.issuer) for lease in leases] == [
        ("dev/connections/legacy_json", 0, "static")]
    events = {e.action: e for e in ledger.events(AuditQuery()) if e.detail.get("source") == "airflow-secrets-manager"}
    assert events["lease"].detail["aws_name"] == f"{airflow_layout['connections_prefix']}legacy_json"
    assert events["lease"].detail["aws_version_id"] and events["lease"].task_id == "train_model"
    assert events["read"].path == "dev/variables/threshold"
    from runlease.redact import default_redactor

    assert PASSWORD not in default_redactor().redact(f"the password is {PASSWORD}")
    assert PASSWORD not in "".join(e.model_dump_json() for e in ledger.events(AuditQuery()))


def test_airflow_layout_under_policy_patterns_and_precedence(
    kwargs: dict[str, object], airflow_layout: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = {**airflow_layout, "connections_lookup_pattern": "^LEGACY_"}  # Airflow's patterns ignore case
    backend = RunleaseBackend(**kwargs, aws_secrets_manager=layout)
    assert backend.get_connection("legacy_uri").host == "db.legacy"
    assert backend.get_connection("custom_words") is None  # not matched: not looked up
    backend.broker.put("dev/connections/legacy_uri", WAREHOUSE, ADMIN)  # runlease's own secret wins
    assert backend.get_connection("legacy_uri").host == "wh.internal"
    in_task(monkeypatch)
    with pytest.raises(InvalidValueError) as caught:
        backend.get_connection("legacy_bad_port")
    assert "'legacy_bad_port'" in str(caught.value) and "port" in str(caught.value)
    assert PASSWORD not in str(caught.value) and "abc" not in str(caught.value)
    assert not [lease for lease in backend.state.runtime.ledger.find_leases(state=LeaseState.ACTIVE)
                if str(lease.path).endswith("bad_port")]


def test_airflow_layout_obeys_policy(
    kwargs: dict[str, object], airflow_layout: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runlease_airflow.errors import RunleaseAccessDenied

    (Path(str(kwargs["home"])) / "policy.toml").write_text(
        '[[grant]]\nprincipals = ["airflow:other_dag"]\nenvironments = ["dev"]\n'
        'paths = ["connections/*"]\ncapabilities = ["lease", "read"]\n')
    backend = RunleaseBackend(**kwargs, aws_secrets_manager=airflow_layout)
    in_task(monkeypatch)
    with pytest.raises(RunleaseAccessDenied):
        backend.get_connection("legacy_json")
    denied = [e for e in backend.state.runtime.ledger.events(AuditQuery(action="lease"))
              if e.outcome.value == "denied"]
    assert [e.path for e in denied] == ["dev/connections/legacy_json"]


@pytest.mark.parametrize(("raw", "named"), [
    ({"sep": ""}, "sep"),
    ({"extra_conn_words": {"username": ["u"]}}, "extra_conn_words"),
    ({"connections_lookup_pattern": "(unclosed"}, "connections_lookup_pattern"),
    ({"prefix": "x"}, "prefix"),
    ("not json", "aws_secrets_manager"),
])
def test_airflow_layout_kwarg_errors_name_the_setting(kwargs: dict[str, object], raw: object, named: str) -> None:
    from runlease.errors import ConfigError

    with pytest.raises(ConfigError, match=named):
        RunleaseBackend(**kwargs, aws_secrets_manager=raw)
