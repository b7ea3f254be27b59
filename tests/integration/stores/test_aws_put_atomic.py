"""Issue 16 on moto's server over HTTP: atomic puts, unfinished writes, adoption, requests per read.

Faults moto cannot produce (an IAM denial of one action) come from
:mod:`support.aws_fault_proxy`, a proxy on 127.0.0.1 that answers the chosen
action with AWS's AccessDeniedException and forwards everything else to moto.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from runlease.errors import SecretNotFoundError, StoreAccessDeniedError
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.runtime import Runtime
from runlease.store.aws import AwsOptions, AwsSecretsStore, version_id
from store_support import BASE, BASE_SECRET, P, ROLE_ARN, STS, aws_options
from support.aws_fault_proxy import FaultProxy

OTHER = {"conn_type": "aws", "login": "AKIAOTHEROTHEREXAMPL", "password": "Other-Secret-Key-0123456789"}  # runlease: allow aws-access-key-id, high-entropy-secret (test fixture)
ADMIN = RunIdentity(orchestrator="cli", pipeline="admin", run_id="cli", task_id="put", principal="admin")


def _errors(rt: Runtime, action: str) -> list[Any]:
    return [e for e in rt.ledger.events(AuditQuery()) if e.action == action and e.outcome.value == "error"]


@pytest.mark.parametrize("denied", ["TagResource", "UpdateSecretVersionStage"])
def test_a_put_whose_settings_or_stage_move_are_denied_changes_nothing_a_reader_sees(
    rt: Runtime, proxy: FaultProxy, denied: str
) -> None:
    """The aws-sts base credentials must never become leasable as `static` (issue 16, 1 and 7)."""
    assert rt.broker.put(P, BASE, ADMIN, metadata=STS) == 1
    proxy.deny = {denied}
    with pytest.raises(StoreAccessDeniedError, match=denied):
        rt.broker.put(P, OTHER, ADMIN, metadata={"issuer": "static"})
    proxy.deny = set()
    for store in (rt.store, AwsSecretsStore(rt.store.options)):  # this process, and one that never cached
        current = store.get(P)
        assert (current.version, current.value, current.metadata["issuer"]) == (1, BASE, "aws-sts")
        assert store.resolve(P).metadata["issuer"] == "aws-sts"
        assert store.info(P).metadata["issuer"] == "aws-sts"
        with pytest.raises(SecretNotFoundError, match="unfinished write"):
            store.get(P, version=2)
        assert [v.version for v in store.history(P)] == [1]
    failed = _errors(rt, "write")
    assert len(failed) == 1 and failed[0].detail["error"] == "StoreAccessDeniedError"
    assert BASE_SECRET not in str(failed[0].detail)
    # A later put goes through, and the demoted version keeps the settings it was written with.
    assert rt.broker.put(P, OTHER, ADMIN, metadata={"issuer": "static"}) == 3
    assert (rt.store.get(P).version, rt.store.get(P).metadata["issuer"]) == (3, "static")
    previous = rt.store.get(P, stage=Stage.PREVIOUS)
    assert (previous.version, previous.metadata["issuer"], previous.metadata["role_arn"]) == (1, "aws-sts", ROLE_ARN)
    assert rt.store.info(P).metadata["issuer"] == "static"


def test_every_moment_of_a_put_pairs_value_and_settings(moto_url: str, proxy: FaultProxy) -> None:
    """Stop a settings-changing put after each AWS call it makes; a fresh reader must see a matching pair."""
    store = AwsSecretsStore.from_options(aws_options(proxy.url))
    store.put(P, BASE, metadata=STS)
    store.put(P, OTHER, metadata={"issuer": "static"})
    proxy.taken()
    store.put(P, BASE, metadata=STS)
    steps = [a for a in proxy.taken() if a in ("PutSecretValue", "TagResource", "UntagResource",
                                                "UpdateSecretVersionStage")]
    assert steps[0] == "PutSecretValue" and "UpdateSecretVersionStage" in steps
    for cut in range(len(steps) + 1):
        fresh = AwsSecretsStore.from_options({**aws_options(proxy.url), "prefix": store.prefix + f"cut{cut}/"})
        fresh.put(P, BASE, metadata=STS)
        fresh.put(P, OTHER, metadata={"issuer": "static"})
        proxy.deny = set(steps[cut:cut + 1])  # the first call of that kind from here on fails
        try:
            fresh.put(P, BASE, metadata=STS)
        except StoreAccessDeniedError:
            pass
        proxy.deny = set()
        reader = AwsSecretsStore.from_options({**aws_options(proxy.url), "prefix": fresh.prefix})
        got = reader.get(P)
        expected = "aws-sts" if got.value == BASE else "static"
        assert got.metadata["issuer"] == expected, (cut, steps)
        assert reader.resolve(P).metadata["issuer"] == expected


def test_put_over_a_secret_created_outside_runlease_adopts_it(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url)
    client.create_secret(Name=f"{store.prefix}{P}", SecretString='"made in the console"')
    assert store.list() == []
    assert store.put(P, BASE) == 1
    assert [str(i.path) for i in store.list()] == [str(P)]


def test_reads_and_listing_cost_one_request(moto_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    store = AwsSecretsStore.from_options(aws_options(proxy.url))
    names = [SecretPath.parse(f"dev/connections/c{i}") for i in range(4)]
    for path in names:
        store.put(path, BASE, metadata=STS)
        store.put(path, OTHER, stage=Stage.PENDING)
    proxy.taken()
    assert len(store.list()) == 4
    assert proxy.taken() == ["ListSecrets"]
    reader = AwsSecretsStore.from_options({**aws_options(proxy.url), "prefix": store.prefix})
    got = reader.get(names[0])  # a store object that never saw the secret: the envelope carries the settings
    assert (got.value, got.metadata) == (BASE, STS)
    assert proxy.taken() == ["GetSecretValue"]
    pending = reader.get(names[0], stage=Stage.PENDING)  # written by a plain put: the secret's settings then
    assert (pending.value, pending.metadata) == (OTHER, STS)
    assert proxy.taken() == ["GetSecretValue"]
    store.put(names[0], OTHER, metadata={"issuer": "static", "owner": "etl"})  # another process writes
    proxy.taken()
    got = reader.get(names[0])
    assert (got.value, got.metadata) == (OTHER, {"issuer": "static", "owner": "etl", "role_arn": ROLE_ARN})
    assert proxy.taken() == ["GetSecretValue"]
    no_cache = AwsSecretsStore.from_options({**aws_options(proxy.url), "prefix": store.prefix,
                                             "metadata_cache_seconds": 0})
    no_cache.get(names[0])
    no_cache.get(names[0])
    assert proxy.taken() == ["GetSecretValue"] * 2
    no_cache.get(names[0], version=1)  # an explicit version: DescribeSecret too (is the secret soft-deleted?)
    assert proxy.taken() == ["GetSecretValue", "DescribeSecret"]


def test_a_soft_delete_is_seen_at_once_by_a_reader_with_cached_tags(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    store.put(P, BASE)
    store.put(P, OTHER)
    reader = AwsSecretsStore.from_options({**aws_options(moto_url), "prefix": store.prefix})
    assert reader.get(P).value == OTHER
    store.delete(P)
    for stage in Stage:
        with pytest.raises(SecretNotFoundError):
            reader.get(P, stage=stage)
    assert store.put(P, BASE) == 3 and reader.get(P).value == BASE
    assert store.resolve(P).version == 3 and store.info(P).stages == {Stage.CURRENT: 3}


def test_prefix_without_a_slash_is_normalised_and_a_wrong_region_is_named(moto_url: str) -> None:
    assert AwsOptions(prefix="team-a").prefix == "team-a/"
    assert AwsOptions(prefix="").prefix == ""
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    store.put(P, BASE)
    elsewhere = AwsSecretsStore.from_options({**aws_options(moto_url), "prefix": store.prefix, "region": "eu-west-1"})
    with pytest.raises(SecretNotFoundError) as caught:
        elsewhere.get(P)
    assert f"{store.prefix}{P}" in str(caught.value) and "eu-west-1" in str(caught.value)
    with pytest.raises(SecretNotFoundError, match="eu-west-1"):
        elsewhere.resolve(P)


def test_version_ids_stay_what_the_layout_says(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    store.put(P, BASE, metadata=STS)
    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url)
    stages = client.describe_secret(SecretId=f"{store.prefix}{P}")["VersionIdsToStages"]
    assert stages[version_id(1)] == ["AWSCURRENT"]  # the writing label is gone once the put finished
    tags = {t["Key"] for t in client.describe_secret(SecretId=f"{store.prefix}{P}")["Tags"]}
    assert not [k for k in tags if "runlease.next" in k]


def test_rotation_status_dates_current_from_one_listing(moto_url: str, proxy: FaultProxy) -> None:
    from runlease.rotation.policy import RotationPolicy
    from runlease.rotation.status import scan

    store = AwsSecretsStore.from_options(aws_options(proxy.url))
    paths = [SecretPath.parse(f"dev/tokens/t{i}") for i in range(3)]
    for path in paths:
        store.put(path, "v1")
        store.put(path, "v2")
        store.update_metadata(path, RotationPolicy(rotator="token", interval_s=86400, grace_s=0,
                                                   settings={}).to_metadata())
    proxy.taken()
    rows = scan(store)
    assert proxy.taken() == ["ListSecrets"]
    for row in rows:
        history = {v.version: v.created_at for v in store.history(row.path)}
        assert row.current_version == 2 and abs((row.current_created_at - history[2]).total_seconds()) < 5


def test_cli_put_with_an_issuer_denied_tagging_exits_6_and_changes_nothing(
    proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's own reproduction: `runlease put --issuer aws-sts` with TagResource denied."""
    import json

    from typer.testing import CliRunner

    from runlease.cli.main import app

    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("RUNLEASE_STORE", "aws")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(aws_options(proxy.url)))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert runner.invoke(app, ["put", str(P), "--stdin"], input=json.dumps(OTHER)).exit_code == 0
    proxy.deny = {"TagResource"}
    result = runner.invoke(app, ["put", str(P), "--stdin", "--issuer", "aws-sts", "--issuer-opt",
                                 f"role_arn={ROLE_ARN}"], input=json.dumps(BASE))
    assert result.exit_code == 6, result.output
    assert "TagResource" in result.output and BASE_SECRET not in result.output
    proxy.deny = set()
    result = runner.invoke(app, ["get", str(P), "--reveal"])
    assert result.exit_code == 0 and json.loads(result.output)["login"] == OTHER["login"]
    result = runner.invoke(app, ["get", str(P), "--version", "2"])
    assert result.exit_code == 4 and "unfinished write" in result.output


def test_settings_of_a_pending_put_apply_to_it_and_become_the_secrets_when_it_is_promoted(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    store.put(P, BASE, metadata=STS)
    store.put(P, OTHER, stage=Stage.PENDING, metadata={"issuer": "static"})
    reader = AwsSecretsStore.from_options({**aws_options(moto_url), "prefix": store.prefix})
    assert reader.get(P).metadata["issuer"] == "aws-sts"
    assert reader.get(P, stage=Stage.PENDING).metadata["issuer"] == "static"
    assert store.info(P).metadata["issuer"] == "aws-sts"
    # What a rotation's finish does: PREVIOUS to the old CURRENT, then CURRENT to the PENDING version.
    store.move_stage(P, Stage.PREVIOUS, 1)
    store.move_stage(P, Stage.CURRENT, 2, expected=1)
    assert reader.get(P).metadata["issuer"] == "static" and store.info(P).metadata["issuer"] == "static"
    previous = reader.get(P, stage=Stage.PREVIOUS)
    assert (previous.version, previous.metadata["issuer"]) == (1, "aws-sts")
