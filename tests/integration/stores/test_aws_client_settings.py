"""AWS client settings against moto's server over HTTP: attempts, bad settings, proxies, web identity.

Throttling and the proxy hop come from :mod:`support.aws_fault_proxy` on
127.0.0.1 (moto cannot throttle on demand).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.clients.awsclient import AwsService
from runlease.cli.main import app
from runlease.errors import ConfigError, StoreUnavailableError
from runlease.models import SecretPath
from runlease.store.aws import AwsSecretsStore
from store_support import aws_options, free_port
from support.aws_fault_proxy import FaultProxy

P = SecretPath.parse("dev/variables/token")
ROLE = "arn:aws:iam::123456789012:role/runlease-reader"


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_max_attempts_is_the_total_number_of_attempts(proxy: FaultProxy, attempts: int) -> None:
    store = AwsSecretsStore.from_options({**aws_options(proxy.url), "max_attempts": attempts})
    proxy.fail = {"DescribeSecret": (400, "ThrottlingException")}
    with pytest.raises(StoreUnavailableError, match="ThrottlingException"):
        store.resolve(P)
    assert proxy.taken() == ["DescribeSecret"] * attempts


@pytest.mark.parametrize(("options", "named"), [
    ({"region": "eu west 1"}, "region"),
    ({"region": "EU-WEST-1"}, "region"),
    ({"endpoint_url": "127.0.0.1:4566"}, "endpoint_url"),
    ({"config_kwargs": {"retries": {"max_attempts": 9}}}, "config_kwargs"),
    ({"assume_role_method": "assume_role_with_web_identity"}, "role_arn"),
])
def test_bad_settings_are_config_errors_naming_the_option(options: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AwsSecretsStore.from_options({"prefix": "x/", **options})
    assert named in str(caught.value) and caught.value.exit_code == 2
    for value in options.values():
        if isinstance(value, str) and value != "assume_role_with_web_identity":
            assert value not in str(caught.value)


def test_cli_exits_2_for_bad_region_and_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("RUNLEASE_STORE", "aws")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps({"region": "moon-base"}))
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 2 and "region" in result.output and "moon-base" not in result.output
    monkeypatch.delenv("RUNLEASE_STORE")
    result = CliRunner().invoke(app, ["init", "--kms-key-id", "alias/k", "--kms-endpoint-url", "kms.local:4566"])
    assert result.exit_code == 2 and "--kms-endpoint-url" in result.output and "Traceback" not in result.output


def test_partial_credentials_name_the_missing_setting(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPARTIALONLY00000")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    with pytest.raises(ConfigError) as caught:
        store.resolve(P)
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value) and caught.value.exit_code == 2
    assert "AKIAPARTIALONLY00000" not in str(caught.value)


def test_an_endpoint_from_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    store = AwsSecretsStore.from_options({"region": "us-east-1", "prefix": "x/", "max_attempts": 1,
                                          "connect_timeout": 1})
    with pytest.raises(StoreUnavailableError) as caught:
        store.resolve(P)
    assert f"{dead} (from AWS_ENDPOINT_URL)" in str(caught.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "127.0.0.1:1")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL_SECRETS_MANAGER.*scheme"):
        AwsSecretsStore.from_options({"region": "us-east-1", "prefix": "x/"}).resolve(P)


def test_proxies_verify_and_config_kwargs_reach_the_client(moto_url: str, proxy: FaultProxy) -> None:
    store = AwsSecretsStore.from_options(aws_options(
        moto_url, proxies={"http": proxy.url}, verify=False, config_kwargs={"user_agent_extra": "team-etl"}))
    store.put(P, "tok-1")
    assert store.get(P).value == "tok-1"
    assert "PutSecretValue" in proxy.taken()  # the calls went through the HTTP proxy
    assert "team-etl" in store.service.client().meta.config.user_agent_extra


def test_role_assumed_with_a_web_identity_token(moto_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZXRsIn0.c2ln")
    store = AwsSecretsStore.from_options(aws_options(
        proxy.url, role_arn=ROLE, role_session_name="rl-web", assume_role_method="assume_role_with_web_identity",
        web_identity_token_file=str(token), assume_role_kwargs={"DurationSeconds": 900}))
    store.put(P, "tok-web")
    assert store.get(P).value == "tok-web"
    assert proxy.taken()[0] == "AssumeRoleWithWebIdentity"
    identity = AwsService("sts", store.options, label="STS").client().get_caller_identity()
    assert identity["Arn"].endswith(":assumed-role/runlease-reader/rl-web")


def test_a_ca_bundle_is_what_the_client_verifies_with(tmp_path: Path) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    store = AwsSecretsStore.from_options({"region": "eu-west-1", "prefix": "x/", "verify": str(bundle),
                                          "endpoint_url": "https://secretsmanager.eu-west-1.amazonaws.com"})
    session = store.service.client()._endpoint.http_session
    assert session._verify == str(bundle)

