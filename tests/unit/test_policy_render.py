"""``runlease policy render``: each grant maps to exactly its paths and capabilities, nothing wider.

The rendered documents are parsed the way their consumers read them (HCL
with python-hcl2, IAM as JSON) and then *evaluated* with small, independent
models of the target's matching rules:

* Vault: ``+`` is one whole segment, a trailing ``*`` a prefix, and when
  several rules of one policy match, only the highest-priority one counts
  (https://developer.hashicorp.com/vault/docs/concepts/policies#priority-matching).
* IAM: statements are unioned; ``*`` and ``?`` are the only wildcards; a
  ``StringLike`` condition on ``secretsmanager:Name`` must hold too.

Each is checked against the runlease policy's own answer (fnmatch on env and
kind/name) over a universe of paths that includes the classic near misses
(``warehouse-old``, ``warehouse2``, ``production`` vs ``prod``, a name that
ends in ``-`` plus six characters).
"""

from __future__ import annotations

import functools
import json
import re
from fnmatch import fnmatchcase
from pathlib import Path

import hcl2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.errors import ConfigError
from runlease.models import KINDS, Capability
from runlease.policy.grants import Policy
from runlease.policy.render import (
    IAM_ACTIONS,
    VAULT_CAPABILITIES,
    VAULT_FAMILIES,
    RenderError,
    RenderOptions,
    grants_by_principal,
    render,
)

ACCOUNT, REGION, MOUNT, PREFIX = "123456789012", "eu-west-1", "secret", "runlease"
OPTS = RenderOptions(mount=MOUNT, prefix=PREFIX, region=REGION, account=ACCOUNT)
ENVS = ["dev", "stage", "prod", "production", "d", "staging"]
NAMES = ["warehouse", "warehouse2", "warehouse-old", "warehouse-abcdef", "warehouse.bak", "model_registry",
         "training_a", "training_", "train", "x", "a-b"]
UNIVERSE = [(e, k, n) for e in ENVS for k in sorted(KINDS) for n in NAMES]
ALL_ACTIONS = sorted({a for actions in IAM_ACTIONS.values() for a in actions})


def expected_caps(policy: Policy, principal: str, env: str, kind: str, name: str) -> set[Capability]:
    caps: set[Capability] = set()
    for grant in grants_by_principal(policy)[principal]:
        if any(fnmatchcase(env, e) for e in grant.environments) and any(
            fnmatchcase(f"{kind}/{name}", p) for p in grant.paths
        ):
            caps.update(grant.capabilities)
    return caps


# -- a model of Vault's ACL path matching ------------------------------------------------


def _unquote(text: str) -> str:
    return json.loads(text) if text.startswith('"') else text


def parse_hcl(text: str) -> dict[str, set[str]]:
    doc = hcl2.loads(text)
    rules: dict[str, set[str]] = {}
    for block in doc.get("path", []):
        for raw_path, body in block.items():
            path = _unquote(raw_path)
            assert path not in rules, f"duplicate path block {path}"
            rules[path] = {_unquote(c) for c in body["capabilities"]}
    return rules


def vault_matches(pattern: str, path: str) -> bool:
    return _vault_regex(pattern).fullmatch(path) is not None


@functools.lru_cache(maxsize=4096)
def _vault_regex(pattern: str) -> re.Pattern[str]:
    regex = ""
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        if i:
            regex += "/"
        if segment == "+":
            regex += "[^/]+"
        elif i == len(segments) - 1 and segment.endswith("*"):
            regex += re.escape(segment[:-1]) + ".*"
        else:
            assert "*" not in segment and "+" not in segment, f"Vault would reject pattern {pattern}"
            regex += re.escape(segment)
    return re.compile(regex)


def _priority(pattern: str) -> tuple[int, int, int, int, str]:
    """Sort key: a higher tuple is a higher priority, following Vault's five rules in order."""
    positions = [i for i, ch in enumerate(pattern) if ch in "+*"]
    first_wildcard = positions[0] if positions else len(pattern) + 1  # later first wildcard = higher
    not_glob = 0 if pattern.endswith("*") else 1  # ending in * is lower
    fewer_plus = -pattern.split("/").count("+")  # more + segments is lower
    return (first_wildcard, not_glob, fewer_plus, len(pattern), pattern)


def vault_effective(rules: dict[str, set[str]], path: str) -> set[str]:
    matching = [p for p in rules if vault_matches(p, path)]
    return set(rules[max(matching, key=_priority)]) if matching else set()


# -- a model of IAM evaluation -----------------------------------------------------------


def iam_glob(pattern: str, value: str) -> bool:
    return _iam_regex(pattern).fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _iam_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern))


def iam_allows(doc: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action not in actions or not any(iam_glob(r, resource) for r in statement["Resource"]):
            continue
        condition = statement.get("Condition", {})
        assert set(condition) <= {"StringLike"}, condition
        like = condition.get("StringLike", {})
        assert set(like) <= {"secretsmanager:Name"}, like
        if all(key in context and any(iam_glob(p, context[key]) for p in pats) for key, pats in like.items()):
            return True
    return False


def arn(name: str, suffix: str = "-AbC123", account: str = ACCOUNT, region: str = REGION) -> str:
    return f"arn:aws:secretsmanager:{region}:{account}:secret:{name}{suffix}"


# -- the checks ----------------------------------------------------------------------


def check_vault_exact(policy: Policy) -> None:
    rendered = render(policy, "vault-hcl", OPTS)
    for principal, (_, text) in rendered.documents.items():
        rules = parse_hcl(text)
        for env, kind, name in UNIVERSE:
            caps = expected_caps(policy, principal, env, kind, name)
            for family in VAULT_FAMILIES:
                want = set().union(*(VAULT_CAPABILITIES[c].get(family, set()) for c in caps))
                got = vault_effective(rules, f"{MOUNT}/{family}/{PREFIX}/{env}/{kind}/{name}")
                assert got == want, (principal, family, env, kind, name)
                # the state record (stages) must grant exactly the same
                got = vault_effective(rules, f"{MOUNT}/{family}/{PREFIX}/_state/{env}/{kind}/{name}")
                assert got == want, (principal, family, "_state", env, kind, name)
        # Nothing outside the mount/prefix, and nothing for a path deeper than <env>/<kind>/<name>'s shape.
        for outside in (f"{MOUNT}/data/other/dev/connections/warehouse", f"kv/data/{PREFIX}/dev/connections/warehouse",
                        f"{MOUNT}/data/{PREFIX}", "sys/policies/acl/x"):
            assert vault_effective(rules, outside) == set(), outside


def check_iam_exact(policy: Policy) -> None:
    rendered = render(policy, "aws-iam", OPTS)
    for principal, (_, text) in rendered.documents.items():
        doc = json.loads(text)
        assert doc["Version"] == "2012-10-17"
        for env, kind, name in UNIVERSE:
            caps = expected_caps(policy, principal, env, kind, name)
            want = set().union(*(IAM_ACTIONS[c] for c in caps))
            secret_name = f"{PREFIX}/{env}/{kind}/{name}"
            for action in ALL_ACTIONS:
                if action == "secretsmanager:CreateSecret":  # the secret does not exist yet: either ARN form
                    forms = [arn(secret_name, ""), arn(secret_name)]
                else:
                    forms = [arn(secret_name)]
                for resource in forms:
                    got = iam_allows(doc, action, resource, {"secretsmanager:Name": secret_name})
                    assert got == (action in want), (principal, action, resource)
            for action in ALL_ACTIONS:  # another account, region or prefix: never
                for resource in (arn(secret_name, account="210987654321"), arn(secret_name, region="us-east-1"),
                                 arn(f"other/{env}/{kind}/{name}")):
                    assert not iam_allows(doc, action, resource, {"secretsmanager:Name": secret_name})


POLICY_TOML = """
[[grant]]
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
principals   = ["airflow:training_*", "kfp:train"]
environments = ["dev", "stage"]
paths        = ["connections/warehouse", "connections/model_registry", "variables/*"]
capabilities = ["lease"]

[[grant]]
principals   = ["airflow:training_*"]
environments = ["*"]
paths        = ["connections/warehouse"]
capabilities = ["rotate"]

[[grant]]
principals   = ["airflow:etl"]
environments = ["prod"]
paths        = ["*/train*", "tokens/x"]
capabilities = ["read", "lease"]

[[grant]]
principals   = ["airflow:etl"]
environments = ["stage"]
paths        = ["connections/*"]
capabilities = ["read"]

[[grant]]
principals   = ["airflow:etl"]
environments = ["*"]
paths        = ["connections/warehouse"]
capabilities = ["admin"]
"""


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    return Policy.load(path)


def test_vault_hcl_grants_exactly_what_the_policy_grants(policy: Policy) -> None:
    check_vault_exact(policy)


def test_iam_grants_exactly_what_the_policy_grants(policy: Policy) -> None:
    check_iam_exact(policy)


def test_overlapping_grants_keep_every_capability_under_vault_priority(policy: Policy) -> None:
    """airflow:etl: read on stage/connections/*, admin on +/connections/warehouse.

    For stage/connections/warehouse Vault would pick ``stage/connections/*`` (its
    first wildcard comes later) and drop admin; the rendered intersection rule
    keeps both.
    """
    rules = parse_hcl(render(policy, "vault-hcl", OPTS).documents["airflow:etl"][1])
    admin = set(VAULT_CAPABILITIES[Capability.ADMIN]["data"])
    assert rules["secret/data/runlease/stage/connections/warehouse"] == admin  # the added intersection
    assert vault_effective(rules, "secret/data/runlease/stage/connections/warehouse") == admin
    assert vault_effective(rules, "secret/data/runlease/dev/connections/warehouse") == admin
    assert vault_effective(rules, "secret/data/runlease/stage/connections/other") == {"read"}
    assert vault_effective(rules, "secret/data/runlease/dev/connections/other") == set()


def test_the_capability_mapping_is_the_documented_one() -> None:
    """Pinned literally (not derived), so a change to the mapping is a visible, reviewed change."""
    assert VAULT_CAPABILITIES[Capability.READ] == {"data": {"read"}, "metadata": {"read"}}
    assert VAULT_CAPABILITIES[Capability.LEASE] == VAULT_CAPABILITIES[Capability.READ]
    assert VAULT_CAPABILITIES[Capability.ROTATE] == {"data": {"create", "update", "read"},
                                                      "metadata": {"create", "update", "read"},
                                                      "delete": {"update"}}
    assert VAULT_CAPABILITIES[Capability.ADMIN]["data"] == {"create", "read", "update", "patch", "delete", "list"}
    assert IAM_ACTIONS[Capability.LEASE] == ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")
    assert set(IAM_ACTIONS[Capability.ROTATE]) - set(IAM_ACTIONS[Capability.READ]) == {
        "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"}
    assert set(IAM_ACTIONS[Capability.ADMIN]) - set(IAM_ACTIONS[Capability.ROTATE]) == {
        "secretsmanager:CreateSecret", "secretsmanager:DeleteSecret", "secretsmanager:TagResource"}


ENV_GLOBS = st.sampled_from(["dev", "stage", "prod", "*"])
PATH_GLOBS = st.sampled_from(["connections/warehouse", "connections/*", "*/warehouse", "variables/train*",
                              "*", "tokens/x", "connections/warehouse*", "*/*"])
CAPS = st.lists(st.sampled_from([c.value for c in Capability]), min_size=1, max_size=3, unique=True)
GRANTS = st.lists(
    st.fixed_dictionaries({
        "principals": st.lists(st.sampled_from(["p1", "p2"]), min_size=1, max_size=2, unique=True),
        "environments": st.lists(ENV_GLOBS, min_size=1, max_size=2, unique=True),
        "paths": st.lists(PATH_GLOBS, min_size=1, max_size=3, unique=True),
        "capabilities": CAPS,
    }),
    min_size=1, max_size=4,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grants=GRANTS)
def test_random_overlapping_policies_render_exactly(grants: list[dict]) -> None:
    policy = Policy.model_validate({"grant": grants})
    check_vault_exact(policy)
    check_iam_exact(policy)


@pytest.mark.parametrize(("field", "glob", "fmt"), [
    ("environments", "d*", "vault-hcl"),        # mid-segment glob: Vault cannot say it
    ("paths", "connections/*_prod", "vault-hcl"),
    ("paths", "conn*/warehouse", "vault-hcl"),
    ("paths", "connections/ware?ouse", "vault-hcl"),
    ("paths", "connections/[ab]x", "aws-iam"),   # character classes: neither can
    ("environments", "[ds]ev", "aws-iam"),
])
def test_globs_that_cannot_be_rendered_exactly_are_refused(field: str, glob: str, fmt: str) -> None:
    grant = {"principals": ["p"], "environments": ["dev"], "paths": ["connections/x"], "capabilities": ["read"],
             "description": "the odd one"}
    grant[field] = [glob]
    with pytest.raises(RenderError, match=f"grant 'the odd one': .*{re.escape(glob)!s}"):
        render(Policy.model_validate({"grant": [grant]}), fmt, OPTS)


def test_iam_needs_an_account_and_an_empty_policy_is_an_error(policy: Policy) -> None:
    with pytest.raises(ConfigError, match="--account"):
        render(policy, "aws-iam", RenderOptions())
    with pytest.raises(ConfigError, match="no grants"):
        render(Policy.allow_all(), "vault-hcl", OPTS)


def test_cli_writes_one_file_per_principal_and_an_index(tmp_path: Path) -> None:
    source = tmp_path / "policy.toml"
    source.write_text(POLICY_TOML)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["policy", "render", str(source), "--format", "vault-hcl", "-o", str(out)])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert set(index) == {"cli", "airflow:training_*", "kfp:train", "airflow:etl"}
    assert len(set(index.values())) == 4 and all(re.fullmatch(r"runlease-[\w-]+\.hcl", f) for f in index.values())
    for filename in index.values():
        assert parse_hcl((out / filename).read_text())
    iam = CliRunner().invoke(app, ["policy", "render", str(source), "--format", "aws-iam", "--account", ACCOUNT,
                                   "--region", REGION])
    assert iam.exit_code == 0
    assert set(json.loads(iam.output)) == set(index)
    bad = CliRunner().invoke(app, ["policy", "render", str(tmp_path / "missing.toml"), "--format", "vault-hcl"])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    fmt = CliRunner().invoke(app, ["policy", "render", str(source), "--format", "yaml"])
    assert fmt.exit_code == 2 and "vault-hcl or aws-iam" in fmt.output
