from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease.errors import InvalidPathError
from runlease.models import KINDS, SecretPath, resolve_ref


@pytest.mark.parametrize(
    "text",
    [
        "prod/connections/warehouse",
        "dev/variables/batch_size",
        "stage/config/feature.flags",
        "dev-eu-1/tokens/api-key_v2",
        "a/connections/_private",
        "p" + "x" * 31 + "/tokens/" + "n" * 128,
    ],
)
def test_valid_paths_parse_and_print_back(text: str) -> None:
    path = SecretPath.parse(text)
    assert str(path) == text
    env, kind, name = text.split("/")
    assert (path.env, path.kind, path.name) == (env, kind, name)
    assert SecretPath.of(env, kind, name) == path
    # The pydantic entry point accepts the string form too.
    assert SecretPath.model_validate(text) == path


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "expected <environment>/<kind>/<name>"),
        ("warehouse", "expected <environment>/<kind>/<name>"),
        ("prod/warehouse", "expected <environment>/<kind>/<name>"),
        ("prod/connections/warehouse/extra", "expected <environment>/<kind>/<name>"),
        ("/connections/warehouse", "expected <environment>/<kind>/<name>"),
        ("prod//warehouse", "expected <environment>/<kind>/<name>"),
        ("prod/connections/", "expected <environment>/<kind>/<name>"),
        ("Prod/connections/warehouse", "environment 'Prod'"),
        ("1prod/connections/warehouse", "environment '1prod'"),
        ("pr_od/connections/warehouse", "environment 'pr_od'"),
        ("p" * 33 + "/connections/warehouse", "environment 'ppp"),
        ("prod/connection/warehouse", "kind 'connection'"),
        ("prod/Connections/warehouse", "kind 'Connections'"),
        ("prod/secrets/warehouse", "kind 'secrets'"),
        ("prod/connections/.hidden", "name '.hidden'"),
        ("prod/connections/-dash", "name '-dash'"),
        ("prod/connections/ware house", "name 'ware house'"),
        ("prod/connections/ware%house", "name 'ware%house'"),
        ("prod/connections/" + "n" * 129, "name 'nnn"),
        ("prod/connections/caf\u00e9", "name 'caf\u00e9'"),
    ],
)
def test_malformed_paths_name_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(InvalidPathError) as exc:
        SecretPath.parse(text)
    assert names in str(exc.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(InvalidPathError, match="must be a string"):
        SecretPath.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "kind", "name", "names"),
    [
        ("PROD", "connections", "x", "environment 'PROD'"),
        ("prod", "conns", "x", "kind 'conns'"),
        ("prod", "connections", "", "name ''"),
        ("prod", "connections", "a/b", "name 'a/b'"),
    ],
)
def test_of_validates_each_part(env: str, kind: str, name: str, names: str) -> None:
    with pytest.raises(InvalidPathError) as exc:
        SecretPath.of(env, kind, name)
    assert names in str(exc.value)


def test_invalid_path_error_is_a_value_error_with_exit_code() -> None:
    with pytest.raises(ValueError) as exc:
        SecretPath.parse("nope")
    assert isinstance(exc.value, InvalidPathError)
    assert exc.value.exit_code == 2


def test_resolve_ref_bare_id_lands_in_default_env_and_kind() -> None:
    assert str(resolve_ref("warehouse", "prod")) == "prod/connections/warehouse"
    assert str(resolve_ref("batch_size", "dev", "variables")) == "dev/variables/batch_size"


def test_resolve_ref_full_path_keeps_its_own_environment() -> None:
    assert str(resolve_ref("stage/connections/warehouse", "prod")) == "stage/connections/warehouse"


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("connections/warehouse", "expected <environment>/<kind>/<name>"),  # a typo must not pick an env
        ("prod/warehouse", "expected <environment>/<kind>/<name>"),
        ("ware house", "name 'ware house'"),
        ("", "name ''"),
    ],
)
def test_resolve_ref_rejects_malformed_refs(ref: str, names: str) -> None:
    with pytest.raises(InvalidPathError) as exc:
        resolve_ref(ref, "prod")
    assert names in str(exc.value)


def test_resolve_ref_rejects_bad_default_env() -> None:
    with pytest.raises(InvalidPathError, match="environment 'Prod'"):
        resolve_ref("warehouse", "Prod")


def test_paths_are_hashable_and_frozen() -> None:
    a = SecretPath.parse("prod/connections/warehouse")
    b = SecretPath.of("prod", "connections", "warehouse")
    assert {a, b} == {a}
    with pytest.raises(Exception):
        a.env = "dev"  # type: ignore[misc]


envs = st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True)
kinds = st.sampled_from(sorted(KINDS))
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", fullmatch=True)


@given(env=envs, kind=kinds, name=names)
def test_property_parse_str_round_trip(env: str, kind: str, name: str) -> None:
    text = f"{env}/{kind}/{name}"
    path = SecretPath.parse(text)
    assert str(path) == text
    assert SecretPath.parse(str(path)) == path
    assert resolve_ref(text, "other") == path
