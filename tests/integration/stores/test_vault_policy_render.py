"""`runlease policy render --format vault-hcl` output, attached to real OpenBao tokens, runs runlease's own layout.

Bug 2: the rendered policies covered only the value paths, so a lease-only
principal got 403 on the state record (where the stages live) and admin could
not list it (`runlease ls`). Here each rendered policy is written to the
server, a token holding only it drives a VaultStore, and what the grant allows
works while its neighbours are denied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runlease.errors import StoreAccessDeniedError
from runlease.models import SecretPath, Stage
from runlease.policy.grants import Policy
from runlease.policy.render import RenderOptions, render
from runlease.store.vault import VaultStore
from store_support import token_file, vault_options
from support.openbao import OpenBao, unique

WAREHOUSE = SecretPath.parse("dev/connections/warehouse")
REGISTRY = SecretPath.parse("dev/connections/registry")
PROD = SecretPath.parse("prod/connections/warehouse")
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": "pw-policy"}  # runlease: allow secret-assignment (test fixture)

POLICY = """
[[grant]]
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
principals   = ["airflow:training"]
environments = ["dev"]
paths        = ["connections/warehouse"]
capabilities = ["lease"]

[[grant]]
principals   = ["airflow:rotator"]
environments = ["dev"]
paths        = ["connections/*"]
capabilities = ["rotate"]
"""


@pytest.fixture
def stores(openbao: OpenBao, tmp_path: Path) -> dict[str, VaultStore]:
    """One VaultStore per principal, each logged in with a token holding only its rendered policy."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    prefix = unique("rl")
    rendered = render(Policy.load(policy_file), "vault-hcl", RenderOptions(mount="secret", prefix=prefix))
    out: dict[str, VaultStore] = {}
    for principal, (name, hcl) in rendered.documents.items():
        openbao.policy(f"{name}-{prefix}", hcl)
        token = openbao.client().auth.token.create(policies=[f"{name}-{prefix}"], ttl="10m")["auth"]["client_token"]
        out[principal] = VaultStore.from_options(vault_options(
            openbao, tmp_path, prefix=prefix, auth={"method": "token", "token_file": str(token_file(tmp_path, token))}))
    return out


def test_rendered_policies_run_runleases_own_layout(stores: dict[str, VaultStore]) -> None:
    admin, lease, rotator = stores["cli"], stores["airflow:training"], stores["airflow:rotator"]
    admin.check()
    for path in (WAREHOUSE, REGISTRY, PROD):
        admin.put(path, CONN)
    assert sorted(str(i.path) for i in admin.list()) == sorted(map(str, (WAREHOUSE, REGISTRY, PROD)))
    assert [v.version for v in admin.history(WAREHOUSE)] == [1]

    # lease-only: resolve the stage (state record) and read the value, nothing else
    assert lease.resolve(WAREHOUSE).version == 1
    assert lease.get(WAREHOUSE).value == CONN
    for denied in (lambda: lease.get(REGISTRY), lambda: lease.get(PROD), lambda: lease.put(WAREHOUSE, CONN),
                   lambda: lease.list()):
        with pytest.raises(StoreAccessDeniedError):
            denied()

    # rotate: a PENDING version, then the stage move, on its paths only
    assert rotator.put(WAREHOUSE, {**CONN, "password": "next"}, stage=Stage.PENDING) == 2
    rotator.move_stage(WAREHOUSE, Stage.CURRENT, 2, expected=1)
    assert lease.get(WAREHOUSE).value["password"] == "next"
    with pytest.raises(StoreAccessDeniedError):
        rotator.put(PROD, CONN, stage=Stage.PENDING)

    admin.delete(REGISTRY)
    assert sorted(str(i.path) for i in admin.list()) == sorted(map(str, (WAREHOUSE, PROD)))
