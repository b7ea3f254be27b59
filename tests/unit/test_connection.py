from __future__ import annotations

import importlib
import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runlease.connection import (
    connection_from_dict,
    connection_from_json,
    connection_from_uri,
    connection_to_uri,
    parse_connection,
    sensitive_strings,
)
from runlease.errors import InvalidValueError

PASSWORD = "pa$$:w@rd/?#% x"
PASSWORD_Q = quote(PASSWORD, safe="")  # as it sits in a URI

# --- strategies ----------------------------------------------------------------

CONN_TYPES = ["postgres", "mysql", "http", "aws", "google_cloud_platform", "sqlite", "snowflake"]

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hosts = st.lists(label, min_size=1, max_size=4).map(".".join)
# Printable text of any script, always able to carry the URI delimiters.
printable = st.text(
    st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc")),
        st.sampled_from(list("@:/?#%& +=;[]\"'\\")),
    ),
    min_size=1,
    max_size=30,
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), printable,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(printable, inner, max_size=3)),
    max_leaves=8,
)
extra_keys = printable.filter(lambda k: k != "__extra__")
flat_extras = st.dictionaries(extra_keys, st.text(max_size=20), max_size=4)
nested_extras = st.dictionaries(extra_keys, json_values, min_size=1, max_size=4)


@st.composite
def connections(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "conn_type": draw(st.sampled_from(CONN_TYPES)),
        "host": draw(st.none() | hosts),
        "login": draw(st.none() | printable),
        "password": draw(st.none() | printable),
        "schema": draw(st.none() | printable),
        "port": draw(st.none() | st.integers(1, 65535)),
        "extra": draw(st.one_of(st.just({}), flat_extras, nested_extras)),
    }


# --- round trips -------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(c=connections())
def test_property_uri_round_trip(c: dict[str, Any]) -> None:
    assert connection_from_uri(connection_to_uri(c)) == c


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(c=connections())
def test_property_json_round_trip(c: dict[str, Any]) -> None:
    assert connection_from_json(json.dumps(c)) == c
    assert parse_connection(json.dumps(c)) == c
    assert parse_connection(connection_to_uri(c)) == c


@pytest.mark.parametrize("value", ["123", "true", "null", "1.5", '"quoted"', "[1]", '{"a": 1}', ""])
def test_flat_string_extras_that_look_like_json_stay_strings(value: str) -> None:
    c = {"conn_type": "http", "host": "api.example.com", "login": None, "password": "tok",
         "schema": None, "port": None, "extra": {"api_key": value, "region": "eu"}}
    assert connection_from_uri(connection_to_uri(c)) == c


def test_known_uri_examples() -> None:
    assert connection_from_uri("postgresql://etl:p%40ss@db.example.com:5432/warehouse?sslmode=require") == {  # runlease: allow connection-uri-credentials (test fixture)
        "conn_type": "postgres", "host": "db.example.com", "login": "etl", "password": "p@ss",
        "schema": "warehouse", "port": 5432, "extra": {"sslmode": "require"},
    }
    # A host carrying its own protocol, and a dashed scheme meaning an underscored conn_type.
    assert connection_from_uri("google-cloud-platform://https://api.example.com") == {
        "conn_type": "google_cloud_platform", "host": "https://api.example.com", "login": None,
        "password": None, "schema": None, "port": None, "extra": {},
    }
    c = connection_from_uri("aws://?__extra__=%7B%22region_name%22%3A+%22eu-west-1%22%2C+%22n%22%3A+%5B1%5D%7D")
    assert c["extra"] == {"region_name": "eu-west-1", "n": [1]}


def test_extra_accepts_json_string_and_empty() -> None:
    assert connection_from_dict({"conn_type": "http", "extra": '{"a": 1}'})["extra"] == {"a": 1}
    assert connection_from_dict({"conn_type": "http", "extra": ""})["extra"] == {}
    assert connection_from_dict({"conn_type": "http", "extra": None})["extra"] == {}


def test_sensitive_strings_are_password_and_sensitive_extras() -> None:
    c = connection_from_dict({
        "conn_type": "http", "host": "api.example.com", "login": "bob", "password": "pw-123456",  # runlease: allow secret-assignment (test fixture)
        "extra": {"region": "eu", "api_key": "k-abcdef", "nested": {"client_secret": "cs-xyz12", "x": "keep"},  # runlease: allow secret-assignment (test fixture)
                  "auth": ["tok-aaaaa", {"plain": "inner-secret"}]},
    })
    found = sensitive_strings(c)
    assert set(found) == {"pw-123456", "k-abcdef", "cs-xyz12", "tok-aaaaa", "inner-secret"}
    assert "bob" not in found and "eu" not in found and "keep" not in found


def test_sensitive_numeric_extras_are_masked_too() -> None:
    # A numeric token (e.g. read back from a URI query, which JSON-decodes values)
    # is still a credential.
    c = connection_from_uri("http://api.example.com/?api_key=1234567890&timeout=30")
    assert c["extra"] == {"api_key": 1234567890, "timeout": 30}
    assert "1234567890" in sensitive_strings(c)
    assert "30" not in sensitive_strings(c)


# --- Airflow compatibility -------------------------------------------------------


def _airflow_connection_class() -> Any:
    try:
        return importlib.import_module("airflow.models.connection").Connection
    except Exception as err:  # ImportError, or Airflow failing to configure itself
        if os.environ.get("CI") == "true":
            pytest.fail(f"Airflow must be importable in CI for the compatibility test: {err!r}")
        pytest.skip(f"airflow is not importable here: {err!r}")


def _airflow_fields(ac: Any) -> dict[str, Any]:
    return {
        "conn_type": ac.conn_type or None,
        "host": ac.host or None,
        "login": ac.login or None,
        "password": ac.password or None,
        "schema": ac.schema or None,
        "port": ac.port,
        "extra": ac.extra_dejson,
    }


@pytest.fixture(scope="module")
def AirflowConnection() -> Any:  # noqa: N802 - it is a class
    return _airflow_connection_class()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(c=connections())
def test_property_airflow_parses_our_uris_to_the_same_fields(AirflowConnection: Any, c: dict[str, Any]) -> None:
    uri = connection_to_uri(c)
    assert _airflow_fields(AirflowConnection(conn_id="x", uri=uri)) == connection_from_uri(uri)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(c=connections())
def test_property_we_parse_airflows_uris_to_the_same_fields(AirflowConnection: Any, c: dict[str, Any]) -> None:
    ac = AirflowConnection(conn_id="x", **{**c, "extra": json.dumps(c["extra"]) if c["extra"] else None})
    uri = ac.get_uri()
    assert connection_from_uri(uri) == _airflow_fields(AirflowConnection(conn_id="x", uri=uri))


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://etl:p%40ss@db.example.com:5432/warehouse?sslmode=require",  # runlease: allow connection-uri-credentials (test fixture)
        "mysql://root@localhost",
        "http://https://api.example.com:8443/v1?timeout=30&verify=false",
        "aws://?__extra__=%7B%22region_name%22%3A+%22eu-west-1%22%7D",
        "google-cloud-platform://?project=my-proj",
        "postgres://@:5432",
        "sqlite:///%2Ftmp%2Fdb.sqlite",
        "http://user:@host",
        "http://:only-password@host",
    ],
)
def test_airflow_parses_known_uris_like_we_do(AirflowConnection: Any, uri: str) -> None:
    assert _airflow_fields(AirflowConnection(conn_id="x", uri=uri)) == connection_from_uri(uri)


# --- malformed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"db.example.com:{PASSWORD_Q}",  # no scheme separator at all
        f"postgres://etl:{PASSWORD_Q}@db.example.com:99999/warehouse",  # port out of range
        f"postgres://etl:{PASSWORD_Q}@db.example.com:port/warehouse",  # port not a number
        f"http://a://b://etl:{PASSWORD_Q}@c",  # too many schemes
        f"http://etl:{PASSWORD_Q}@https://host",  # credentials inside the host protocol
        f"postgres://etl:{PASSWORD_Q}@db.example.com/warehouse?__extra__=%7Bnot-json",
        f"postgres://etl:{PASSWORD_Q}@db.example.com/warehouse?__extra__=%5B1%2C2%5D",  # extra not an object
        f"postgres://etl:{PASSWORD_Q}@[::1/warehouse",  # broken IPv6 literal
        f"://etl:{PASSWORD_Q}@host",  # empty scheme
    ],
)
def test_malformed_uri_raises_without_echoing_the_password(uri: str) -> None:
    with pytest.raises(InvalidValueError) as exc:
        connection_from_uri(uri)
    message = str(exc.value)
    assert "invalid connection" in message
    for leak in (PASSWORD, PASSWORD_Q, "pa$$", "w@rd", "pa%24%24"):
        assert leak not in message


@pytest.mark.parametrize(
    "text",
    [
        '{"conn_type": "postgres", "password": "%s", ' % PASSWORD,  # truncated JSON
        '["%s"]' % PASSWORD,  # not an object
        '{"conn_type": "postgres", "password": "%s", "port": "%s"}' % (PASSWORD, PASSWORD),
        '{"conn_type": "postgres", "password": "%s", "port": 70000}' % PASSWORD,
        '{"conn_type": "postgres", "password": "%s", "passwd": "%s"}' % (PASSWORD, PASSWORD),
        '{"conn_type": "postgres", "password": "%s", "extra": "%s"}' % (PASSWORD, PASSWORD),
        '{"conn_type": "postgres", "password": "%s", "extra": "[1]"}' % PASSWORD,
        '{"conn_type": "postgres", "password": ["%s"]}' % PASSWORD,
    ],
)
def test_malformed_json_raises_without_echoing_the_password(text: str) -> None:
    with pytest.raises(InvalidValueError) as exc:
        connection_from_json(text)
    message = str(exc.value)
    assert "invalid connection" in message
    assert PASSWORD not in message and "pa$$" not in message
    with pytest.raises(InvalidValueError):
        parse_connection(text)


def test_malformed_json_names_the_bad_field() -> None:
    with pytest.raises(InvalidValueError, match="port"):
        connection_from_json('{"conn_type": "postgres", "port": "x"}')
    with pytest.raises(InvalidValueError, match="passwd"):
        connection_from_json('{"conn_type": "postgres", "passwd": "x"}')
    with pytest.raises(InvalidValueError, match="line 1 column"):
        connection_from_json('{"conn_type": ')
