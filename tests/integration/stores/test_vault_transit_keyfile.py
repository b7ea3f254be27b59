"""The embedded store's KEK wrapped by Vault Transit, on a real OpenBao transit engine.

init, reopen, key rotate and doctor; and the ways the home must refuse to
open: no decrypt permission, Vault unreachable, the Transit key deleted or
too old (min_decryption_version), a key file whose store id was edited, a
key file from another home.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.errors import BackendError, MasterKeyError
from runlease.models import RunIdentity
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings
from runlease.store import vault_auth
from runlease.keys.vault_transit import transit_options
from store_support import free_port, token_file
from support.openbao import OpenBao, unique

WHO = RunIdentity(orchestrator="cli", pipeline="ops", task_id="test")
URI = "postgres://etl:Transit-Pa55word-x@db.internal:5432/analytics"  # runlease: allow connection-uri-credentials (test fixture)


@pytest.fixture
def transit(openbao: OpenBao) -> str:
    """A fresh transit mount and key: ``MOUNT/KEY``."""
    mount = openbao.enable_engine("transit")
    openbao.client().write(f"{mount}/keys/kek", type="aes256-gcm96")
    return f"{mount}/kek"


def connection(openbao: OpenBao, tmp_path: Path, token: str | None = None) -> dict[str, Any]:
    path = token_file(tmp_path, token or openbao.root_token)
    return {"address": openbao.url, "timeout": 5, "auth": {"method": "token", "token_file": str(path)}}


def make_home(openbao: OpenBao, tmp_path: Path, key: str, name: str = "home", token: str | None = None) -> Settings:
    settings = Settings(home=tmp_path / name)
    rt, created = init_home(settings, transit=transit_options(key, connection(openbao, tmp_path, token)))
    assert created
    rt.broker.put("dev/connections/warehouse", URI, WHO)
    rt.close()
    return settings


def test_key_file_holds_only_transit_ciphertext_bound_to_the_store(openbao: OpenBao, transit: str,
                                                                   tmp_path: Path) -> None:
    settings = make_home(openbao, tmp_path, transit)
    doc = json.loads(settings.key_file.read_text())
    rt = open_runtime(settings)  # a new process would do exactly this: unwrap through Transit
    try:
        store_id = rt.local.store_id
        assert rt.broker.read("dev/connections/warehouse", WHO).value == URI
    finally:
        rt.close()
    assert doc["format"] == "runlease-keyfile-vault-transit/v1" and doc["store_id"] == store_id
    assert doc["associated_data"] == f"runlease-store:{store_id}"
    assert doc["transit"]["key"] == transit and doc["transit"]["address"] == openbao.url
    assert settings.key_file.stat().st_mode & 0o777 == 0o600
    [entry] = doc["keys"]
    assert entry["wrapped"].startswith("vault:v1:")
    mount, _, key = transit.rpartition("/")
    kek = base64.b64decode(openbao.client().write(
        f"{mount}/decrypt/{key}", ciphertext=entry["wrapped"],
        associated_data=base64.b64encode(f"runlease-store:{store_id}".encode()).decode())["data"]["plaintext"])
    text = settings.key_file.read_text()
    assert len(kek) == 32 and base64.b64encode(kek).decode() not in text and kek.hex() not in text
    assert '"key":' not in text.replace(f'"key": "{transit}"', "")  # no plain key entry anywhere


def test_an_edited_store_id_or_a_key_file_from_another_home_cannot_open(openbao: OpenBao, transit: str,
                                                                         tmp_path: Path) -> None:
    first = make_home(openbao, tmp_path, transit, "first")
    second = make_home(openbao, tmp_path, transit, "second")
    original = first.key_file.read_text()
    doc = json.loads(original)
    doc["store_id"] = str(uuid.uuid4())  # Transit refuses: the associated data differs
    first.key_file.write_text(json.dumps(doc))
    with pytest.raises(MasterKeyError, match="refused decrypt.*associated data 'runlease-store:") as caught:
        open_runtime(first)
    assert caught.value.exit_code == 3
    first.key_file.write_text(second.key_file.read_text())  # another home's key file: unwraps, wrong KEK
    with pytest.raises(MasterKeyError):
        open_runtime(first)
    first.key_file.write_text(original)
    open_runtime(first).close()


def test_without_decrypt_permission_the_home_does_not_open(openbao: OpenBao, transit: str, tmp_path: Path) -> None:
    """A token that may only encrypt can create the home but never open it: unwrapping needs decrypt."""
    mount, _, key = transit.rpartition("/")
    name = openbao.policy(unique("wrap-only"), f'path "{mount}/encrypt/{key}" {{ capabilities = ["update"] }}\n')
    token = openbao.client().auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    settings = Settings(home=tmp_path / "home")
    init_home(settings, transit=transit_options(transit, connection(openbao, tmp_path, token)))[0].close()
    with pytest.raises(MasterKeyError, match=f"Vault denied {mount}/decrypt/{key}") as caught:
        open_runtime(settings)
    assert caught.value.exit_code == 3 and token not in str(caught.value)


def test_unreachable_vault_is_exit_9_naming_the_address(openbao: OpenBao, transit: str, tmp_path: Path) -> None:
    settings = make_home(openbao, tmp_path, transit)
    doc = json.loads(settings.key_file.read_text())
    doc["transit"]["address"] = f"http://127.0.0.1:{free_port()}"
    settings.key_file.write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="cannot decrypt the KEK.*unreachable") as caught:
        open_runtime(settings)
    assert caught.value.exit_code == 9 and doc["transit"]["address"] in str(caught.value)


def test_a_deleted_or_retired_transit_key_locks_the_store(openbao: OpenBao, transit: str, tmp_path: Path) -> None:
    mount, _, key = transit.rpartition("/")
    settings = make_home(openbao, tmp_path, transit)
    c = openbao.client()
    c.write(f"{mount}/keys/{key}/rotate")
    c.write(f"{mount}/keys/{key}/config", min_decryption_version=2)  # version 1 ciphertexts are refused now
    with pytest.raises(MasterKeyError, match="refused decrypt"):
        open_runtime(settings)
    c.write(f"{mount}/keys/{key}/config", min_decryption_version=1)
    open_runtime(settings).close()
    c.write(f"{mount}/keys/{key}/config", deletion_allowed=True)
    c.delete(f"{mount}/keys/{key}")
    with pytest.raises(MasterKeyError, match=f"no key '{key}'|refused decrypt"):
        open_runtime(settings)


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_cli_init_rotate_doctor_with_a_transit_key(openbao: OpenBao, transit: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mount, _, key = transit.rpartition("/")
    home = tmp_path / "home"
    monkeypatch.setenv("RUNLEASE_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "250")
    for name in ("VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vault_auth, "_sessions", {})  # a fresh process: no login cached from other tests
    monkeypatch.setenv("BAO_ADDR", openbao.url)  # OpenBao's own variables work as well
    token = openbao.client().auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("BAO_TOKEN", token)
    code, out = run("init", "--vault-transit-key", transit)
    assert code == 0, out
    assert f"wrapped by Vault Transit key {transit} at {openbao.url}" in out
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    code, out = run("doctor")
    assert code == 0 and "wrapped by Vault Transit key" in out and "versions v1" in out, out
    openbao.client().write(f"{mount}/keys/{key}/rotate")  # the operator rotates the Transit key...
    code, out = run("key", "rotate")  # ...and runlease re-wraps every KEK under its latest version
    assert code == 0, out
    doc = json.loads((home / "master.key").read_text())
    assert len(doc["keys"]) == 2 and all(e["wrapped"].startswith("vault:v2:") for e in doc["keys"])
    openbao.client().write(f"{mount}/keys/{key}/config", min_decryption_version=2)
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI
    code, out = run("doctor")
    assert code == 0 and "versions v2, v2" in out, out
    openbao.client().auth.token.revoke(token)  # no Vault access any more: the home stays shut
    code, out = run("get", "dev/connections/warehouse", "--reveal")
    assert code == 3 and "Transit-Pa55word" not in out and token not in out, out
    assert "login failed" in out


def test_cli_refuses_bad_transit_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEASE_HOME", str(tmp_path / "home"))
    code, out = run("init", "--vault-transit-key", "nokey")
    assert code == 2 and "MOUNT/KEY" in out
    code, out = run("init", "--vault-transit-key", "transit/k", "--vault-transit-options", '{"address": ')
    assert code == 2 and "not valid JSON" in out
    code, out = run("init", "--vault-transit-key", "transit/k", "--kms-key-id", "alias/x")
    assert code == 2 and "exclude each other" in out
    assert not (tmp_path / "home").exists()


def _fresh_cli_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """A new process's view: no Vault variables, no cached login."""
    monkeypatch.setenv("RUNLEASE_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "250")
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN", "VAULT_SECRET_ID", "BAO_SECRET_ID",
                 "RUNLEASE_STORE", "RUNLEASE_STORE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vault_auth, "_sessions", {})


def test_cli_init_with_explicit_vault_transit_options_approle(openbao: OpenBao, transit: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``--vault-transit-options`` alone says how to reach Vault: AppRole, secret id from a named variable."""
    mount, _, key = transit.rpartition("/")
    policy = openbao.policy(unique("transit"), f'path "{mount}/encrypt/{key}" {{ capabilities = ["update"] }}\n'
                                              f'path "{mount}/decrypt/{key}" {{ capabilities = ["update"] }}\n')
    auth_mount, role_id, secret_id = openbao.approle([policy])
    home = tmp_path / "home"
    _fresh_cli_env(monkeypatch, home)
    monkeypatch.setenv("KEK_SECRET_ID", secret_id)
    options = {"address": openbao.url, "timeout": 5,
               "auth": {"method": "approle", "mount": auth_mount, "role_id": role_id, "secret_id_env": "KEK_SECRET_ID"}}
    mark = openbao.audit_mark()
    code, out = run("init", "--vault-transit-key", transit, "--vault-transit-options", json.dumps(options))
    assert code == 0, out
    assert f"wrapped by Vault Transit key {transit} at {openbao.url}" in out
    doc = json.loads((home / "master.key").read_text())
    assert doc["transit"]["auth"] == {"method": "approle", "mount": auth_mount, "role_id": role_id,
                                      "secret_id_env": "KEK_SECRET_ID"}
    assert secret_id not in (home / "master.key").read_text()
    assert [r["path"] for r in openbao.requests(mark, path_contains=f"{mount}/")] == [f"{mount}/encrypt/{key}"]
    assert len(openbao.logins(mark, auth_mount)) == 1

    monkeypatch.setattr(vault_auth, "_sessions", {})  # the next command is a new process: it reads the key file
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    monkeypatch.setattr(vault_auth, "_sessions", {})
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI
    assert [r["path"] for r in openbao.requests(mark, path_contains=f"{mount}/")].count(f"{mount}/decrypt/{key}") == 2
    monkeypatch.delenv("KEK_SECRET_ID")  # without the AppRole secret id the home does not open
    monkeypatch.setattr(vault_auth, "_sessions", {})
    code, out = run("get", "dev/connections/warehouse", "--reveal")
    assert code != 0 and "Transit-Pa55word" not in out and secret_id not in out, out


def test_cli_init_reuses_the_vault_store_options_for_transit(openbao: OpenBao, transit: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Vault store, ``--vault-transit-key`` alone reaches Vault the way RUNLEASE_STORE_OPTIONS says.

    Only the connection fields are taken (address, timeout, auth...), not the store's own
    (mount, prefix); and ``--vault-transit-options``, when given, replaces them.
    """
    mount, _, key = transit.rpartition("/")
    home = tmp_path / "home"
    _fresh_cli_env(monkeypatch, home)
    store_options = {"address": openbao.url, "prefix": unique("rl"), "timeout": 7,
                     "auth": {"method": "token", "token_file": str(token_file(tmp_path, openbao.root_token))}}
    monkeypatch.setenv("RUNLEASE_STORE", "vault")
    monkeypatch.setenv("RUNLEASE_STORE_OPTIONS", json.dumps(store_options))
    mark = openbao.audit_mark()
    code, out = run("init", "--vault-transit-key", transit)
    assert code == 0, out
    doc = json.loads((home / "master.key").read_text())
    # (recorded without defaults: method "token" is the default)
    assert doc["transit"] == {"address": openbao.url, "timeout": 7.0, "verify": True,
                              "auth": {"token_file": store_options["auth"]["token_file"]}, "key": transit}
    assert [r["path"] for r in openbao.requests(mark, path_contains=f"{mount}/")] == [f"{mount}/encrypt/{key}"]
    monkeypatch.setattr(vault_auth, "_sessions", {})
    assert run("put", "dev/connections/warehouse", "--stdin", input=URI)[0] == 0
    monkeypatch.setattr(vault_auth, "_sessions", {})
    code, out = run("get", "dev/connections/warehouse", "--reveal", "--uri")
    assert code == 0 and out.strip() == URI

    # explicit options win over the store options: another home, an unreachable Transit address
    other = tmp_path / "other"
    monkeypatch.setenv("RUNLEASE_HOME", str(other))
    explicit = {"address": f"http://127.0.0.1:{free_port()}", "timeout": 2, "auth": store_options["auth"]}
    code, out = run("init", "--vault-transit-key", transit, "--vault-transit-options", json.dumps(explicit))
    assert code == 9 and explicit["address"] in out, out
    assert not (other / "master.key").exists()


@pytest.mark.parametrize(("options", "says"), [
    ('[{"address": "http://127.0.0.1:1"}]', "must be one JSON object"),
    ('{"auth": {"method": "token", "token": "s.inline-token-value"}}', "Vault Transit key options"),
    ('{"address": "vault.internal:8200"}', "must start with http:// or https://"),
])
def test_cli_refuses_bad_vault_transit_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: str,
                                               says: str) -> None:
    _fresh_cli_env(monkeypatch, tmp_path / "home")
    code, out = run("init", "--vault-transit-key", "transit/k", "--vault-transit-options", options)
    assert code == 2 and says in out, out
    assert "inline-token-value" not in out
    assert not (tmp_path / "home").exists()
    code, out = run("init", "--vault-transit-options", '{"address": "http://127.0.0.1:1"}')
    assert code == 2 and "needs --vault-transit-key" in out
