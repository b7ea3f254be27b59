"""AWS-specific behaviour against a moto server over HTTP: layout, explicit stages, KMS, roles, bad input."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from runlease.clients.awsclient import AwsService
from runlease.errors import ConfigError, ConflictError, InvalidValueError, StoreAccessDeniedError, StoreUnavailableError
from runlease.models import SecretPath, Stage
from runlease.store.aws import PLACEHOLDER, AwsSecretsStore, version_id
from store_support import aws_options, free_port

P = SecretPath.parse("dev/connections/warehouse")
PASSWORD = "Aws-Pa55word-never-logged"  # runlease: allow secret-assignment (test fixture)
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": PASSWORD}


def sm(moto_url: str) -> Any:
    return boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url)


def test_layout_version_ids_placeholder_and_tags(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    name = f"{store.prefix}{P}"
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    client = sm(moto_url)
    versions = client.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]
    assert sorted(v["VersionId"] for v in versions) == [version_id(0), version_id(1), version_id(2)]
    assert len(version_id(1)) == 32
    assert client.get_secret_value(SecretId=name, VersionId=version_id(0))["SecretString"] == PLACEHOLDER
    # The value travels in an envelope with the settings it was written with, bound to its name and version.
    assert json.loads(client.get_secret_value(SecretId=name, VersionStage="AWSPENDING")["SecretString"]) == {
        "runlease:envelope": 1, "secret": name, "version": 2, "settings": {}, "value": {**CONN, "password": "two"}}
    store.update_metadata(P, {"issuer": "postgres", "rotation": {"days": 30}})
    tags = {t["Key"]: t["Value"] for t in client.describe_secret(SecretId=name)["Tags"]}
    assert tags["runlease:managed"] == "true" and tags["runlease:meta:issuer"] == "postgres"
    assert "runlease:metaj:rotation" in tags  # JSON does not fit AWS's tag alphabet: base64url
    store.update_metadata(P, {"issuer": {"name": "postgres"}})
    tags = {t["Key"]: t["Value"] for t in client.describe_secret(SecretId=name)["Tags"]}
    assert "runlease:meta:issuer" not in tags and "runlease:metaj:issuer" in tags
    assert store.resolve(P).metadata == {"issuer": {"name": "postgres"}, "rotation": {"days": 30}}


def test_long_metadata_is_chunked_over_tags_and_shrinking_removes_the_rest(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    name = f"{store.prefix}{P}"
    store.put(P, CONN)
    store.update_metadata(P, {"rotation_state": {"reason": "x" * 900}})
    tags = {t["Key"]: t["Value"] for t in sm(moto_url).describe_secret(SecretId=name)["Tags"]}
    chunks = sorted(k for k in tags if k.startswith("runlease:metaj+"))
    assert chunks == ["runlease:metaj+1:rotation_state", "runlease:metaj+2:rotation_state",
                      "runlease:metaj+3:rotation_state", "runlease:metaj+4:rotation_state"]
    assert all(len(v) <= 256 for v in tags.values())
    store.update_metadata(P, {"rotation_state": {"reason": "short"}})
    tags = {t["Key"]: t["Value"] for t in sm(moto_url).describe_secret(SecretId=name)["Tags"]}
    assert not [k for k in tags if k.startswith("runlease:metaj+")]
    assert store.resolve(P).metadata == {"rotation_state": {"reason": "short"}}
    with pytest.raises(InvalidValueError, match="too large for AWS tags"):
        store.update_metadata(P, {"rotation_state": {"reason": "x" * 3000}})


def test_every_value_read_names_its_stage_or_version(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    seen: list[dict[str, Any]] = []
    store.service.client().meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue", lambda params, **_: seen.append(dict(params)))
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    store.get(P)
    store.get(P, stage=Stage.PENDING)
    store.get(P, version=1)
    assert len(seen) == 3
    assert all(("VersionStage" in p) != ("VersionId" in p) for p in seen), seen
    assert [p.get("VersionStage") for p in seen[:2]] == ["AWSCURRENT", "AWSPENDING"]


def test_new_secrets_use_the_configured_kms_key(moto_url: str) -> None:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url)
    key_id = kms.create_key(Description="runlease secrets")["KeyMetadata"]["KeyId"]
    store = AwsSecretsStore.from_options(aws_options(moto_url, kms_key_id=key_id))
    store.put(P, CONN)
    assert sm(moto_url).describe_secret(SecretId=f"{store.prefix}{P}")["KmsKeyId"] == key_id
    assert store.get(P).value == CONN


def test_role_to_assume_on_top_of_the_standard_chain(moto_url: str) -> None:
    role = "arn:aws:iam::123456789012:role/runlease-reader"
    store = AwsSecretsStore.from_options(aws_options(moto_url, role_arn=role, role_session_name="rl-test"))
    store.put(P, CONN)
    assert store.get(P).value == CONN
    identity = AwsService("sts", store.options, label="STS").client().get_caller_identity()
    assert identity["Arn"] == "arn:aws:sts::123456789012:assumed-role/runlease-reader/rl-test"


def test_malformed_values_name_the_secret_never_the_value(moto_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # runlease's own loggers at DEBUG (botocore itself logs request bodies at DEBUG; docs/stores.md warns)
    caplog.set_level(logging.DEBUG, logger="runlease")
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    name = f"{store.prefix}{P}"
    store.put(P, CONN)
    client = sm(moto_url)
    client.put_secret_value(SecretId=name, ClientRequestToken=version_id(2),
                            SecretString="{password: " + PASSWORD, VersionStages=["hand-written"])
    _make_current(client, name, version_id(2))
    with pytest.raises(InvalidValueError) as caught:
        store.get(P)
    message = str(caught.value)
    assert name in message and "version 2" in message and "not valid JSON" in message and PASSWORD not in message
    client.put_secret_value(SecretId=name, ClientRequestToken=version_id(3), SecretString=json.dumps([PASSWORD]),
                            VersionStages=["AWSPENDING"])
    with pytest.raises(InvalidValueError, match="expected a JSON object or string, found list") as caught:
        store.get(P, stage=Stage.PENDING)
    assert PASSWORD not in str(caught.value)
    client.put_secret_value(SecretId=name, ClientRequestToken=version_id(4), SecretBinary=PASSWORD.encode(),
                            VersionStages=["AWSPREVIOUS"])
    with pytest.raises(InvalidValueError, match="no text value"):
        store.get(P, version=4)
    foreign = client.put_secret_value(SecretId=name, SecretString=json.dumps("console edit"),
                                      VersionStages=["console"])["VersionId"]
    _make_current(client, name, foreign)
    with pytest.raises(InvalidValueError, match="which runlease did not write"):
        store.resolve(P)
    with pytest.raises(ConflictError, match="found a version runlease did not write"):
        store.put(P, CONN, cas=2)
    assert store.put(P, CONN) == 5  # a plain put is the way back to a runlease-managed CURRENT
    assert store.resolve(P).version == 5
    assert PASSWORD not in caplog.text


def _make_current(client: Any, name: str, vid: str) -> None:
    """Move AWSCURRENT the way AWS documents it (moto's PutSecretValue tracks AWSCURRENT stale)."""
    holder = next(v for v, labels in client.describe_secret(SecretId=name)["VersionIdsToStages"].items()
                  if "AWSCURRENT" in labels)
    client.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=vid,
                                       RemoveFromVersionId=holder)


def test_unreachable_endpoint_fails_in_bounded_time_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = AwsSecretsStore.from_options({"region": "us-east-1", "endpoint_url": url, "max_attempts": 1,
                                          "connect_timeout": 1})
    with pytest.raises(StoreUnavailableError, match=f"{url}.*unreachable"):
        store.get(P)


def test_silent_endpoint_times_out_naming_it() -> None:
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        store = AwsSecretsStore.from_options({"region": "us-east-1", "endpoint_url": url, "max_attempts": 1,
                                              "connect_timeout": 1, "read_timeout": 0.5})
        with pytest.raises(StoreUnavailableError, match=f"{url}.*did not answer"):
            store.get(P)


def _iam_user(moto_url: str, actions: list[str]) -> dict[str, str]:
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_url)
    user = f"rl-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="runlease", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    return iam.create_access_key(UserName=user)["AccessKey"]


def _use_credentials(path: Path, key: dict[str, str]) -> None:
    path.write_text(f"[default]\naws_access_key_id = {key['AccessKeyId']}\n"
                    f"aws_secret_access_key = {key['SecretAccessKey']}\n")


def test_access_denied_gets_one_fresh_session_then_a_clear_error(
        moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = aws_options(moto_url)
    AwsSecretsStore.from_options(opts).put(P, CONN)
    describe_only = _iam_user(moto_url, ["secretsmanager:DescribeSecret"])
    reader = _iam_user(moto_url, ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"])
    credentials = tmp_path / "credentials"
    _use_credentials(credentials, describe_only)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    requests.post(f"{moto_url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        store = AwsSecretsStore.from_options(opts)
        with pytest.raises(StoreAccessDeniedError, match="secretsmanager:GetSecretValue") as caught:
            store.get(P)
        assert moto_url in str(caught.value) and "403" in str(caught.value)
        assert store.service.sessions == 2  # the denial cost exactly one fresh session
        _use_credentials(credentials, reader)  # e.g. rotated keys, or a fixed role
        assert store.get(P).value == CONN  # denied once more, fresh session picks up the new keys
        assert store.service.sessions == 3
    finally:
        requests.post(f"{moto_url}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def test_options_are_validated(moto_url: str) -> None:
    with pytest.raises(ConfigError, match="regoin"):
        AwsSecretsStore.from_options({"regoin": "us-east-1"})
    with pytest.raises(ConfigError, match="max_attempts"):
        AwsSecretsStore.from_options({"max_attempts": 0})
