"""The embedded store's KEK wrapped by AWS KMS (moto over HTTP): init, reopen, tamper, rotate, CLI."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.errors import ConfigError, MasterKeyError, StoreUnavailableError
from runlease.keys.kms import KmsKeyOptions
from runlease.models import RunIdentity
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings
from store_support import free_port

WHO = RunIdentity(orchestrator="cli", pipeline="ops", task_id="test")
URI = "postgres://etl:Kms-Pa55word-x@db.internal:5432/analytics"  # runlease: allow connection-uri-credentials (test fixture)


@pytest.fixture()
def kms_key(moto_url: str) -> str:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url)
    key = kms.create_key(Description="runlease KEK wrapping")["KeyMetadata"]["KeyId"]
    alias = f"alias/runlease-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key)
    return alias


def kms_options(moto_url: str, key_id: str) -> KmsKeyOptions:
    return KmsKeyOptions(key_id=key_id, region="us-east-1", endpoint_url=moto_url)


def test_key_file_holds_only_kms_ciphertext_bound_to_the_store(moto_url: str, kms_key: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    rt, created = init_home(settings, kms=kms_options(moto_url, kms_key))
    assert created
    rt.broker.put("dev/connections/warehouse", {"conn_type": "postgres", "password": "pw-kms"}, WHO)  # runlease: allow secret-assignment (test fixture)
    store_id = rt.local.store_id
    rt.close()
    doc = json.loads(settings.key_file.read_text())
    assert doc["format"] == "runlease-keyfile-kms/v1" and doc["store_id"] == store_id
    assert doc["encryption_context"] == {"runlease-store": store_id}
    assert settings.key_file.stat().st_mode & 0o777 == 0o600
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url)
    blob = base64.b64decode(doc["keys"][0]["wrapped"])
    kek = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"runlease-store": store_id})["Plaintext"]
    text = settings.key_file.read_text()
    assert base64.b64encode(kek).decode() not in text and kek.hex() not in text and "\"key\"" not in text
    rt = open_runtime(settings)  # a new process would do exactly this: unwrap through KMS
    try:
        assert rt.broker.read("dev/connections/warehouse", WHO).value["password"] == "pw-kms"
    finally:
        rt.close()


def test_edited_encryption_context_fails_clearly(moto_url: str, kms_key: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    init_home(settings, kms=kms_options(moto_url, kms_key))[0].close()
    doc = json.loads(settings.key_file.read_text())
    doc["store_id"] = str(uuid.uuid4())
    settings.key_file.write_text(json.dumps(doc))
    with pytest.raises(MasterKeyError) as caught:
        open_runtime(settings)
    message = str(caught.value)
    assert str(settings.key_file) in message and "InvalidCiphertextException" in message
    assert "encryption context" in message and doc["store_id"] in message


def test_key_file_of_another_store_is_refused(moto_url: str, kms_key: str, tmp_path: Path) -> None:
    one, two = Settings(home=tmp_path / "one"), Settings(home=tmp_path / "two")
    init_home(one, kms=kms_options(moto_url, kms_key))[0].close()
    init_home(two, kms=kms_options(moto_url, kms_key))[0].close()
    two.key_file.write_text(one.key_file.read_text())  # unwraps fine, but it is the wrong KEK
    with pytest.raises(MasterKeyError, match="does not match the store"):
        open_runtime(two)


def test_unreachable_kms_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    options = KmsKeyOptions(key_id="alias/x", region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
                            max_attempts=1, connect_timeout=1)
    with pytest.raises(StoreUnavailableError, match="AWS KMS at http://127.0.0.1"):
        init_home(settings, kms=options)
    assert not settings.key_file.exists() and not settings.store_file.exists()


def test_kms_and_an_environment_key_do_not_mix(moto_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", master_key=base64.b64encode(b"k" * 32).decode())
    with pytest.raises(ConfigError, match="RUNLEASE_MASTER_KEY"):
        init_home(settings, kms=kms_options(moto_url, "alias/any"))


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_cli_init_put_get_rotate_with_kms(moto_url: str, kms_key: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(home))
    monkeypatch.delenv("RUNLEASE_MASTER_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    code, out = run("init", "--kms-key-id", kms_key, "--kms-region", "us-east-1", "--kms-endpoint-url", moto_url)
    assert code == 0, out
    assert f"wrapped by AWS KMS key {kms_key}" in out
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    code, out = run("key", "rotate")
    assert code == 0, out
    doc = json.loads((home / "master.key").read_text())
    assert len(doc["keys"]) == 2 and all("wrapped" in k and "key" not in k for k in doc["keys"])
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI
    code, out = run("audit", "verify")
    assert code == 0, out
    with sqlite3.connect(home / "store.db") as db:
        kek_ids = {row[0] for row in db.execute("SELECT kek_id FROM versions")}
    assert kek_ids == {doc["keys"][0]["id"]}
    doc["store_id"] = "someone-else"
    (home / "master.key").write_text(json.dumps(doc))
    code, out = run("get", "dev/connections/warehouse")
    assert code == 3 and "encryption context" in out and "Kms-Pa55word" not in out


