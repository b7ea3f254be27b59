"""The AWS envelope format on its own: round trip, binding to name and version, old layout, errors that never echo."""

from __future__ import annotations

import json

import pytest

from runlease.errors import InvalidValueError
from runlease.models import SecretPath
from runlease.store.aws_envelope import ENVELOPE_KEY, open_secret_string, seal

P = SecretPath.parse("prod/connections/warehouse")
NAME = "runlease/prod/connections/warehouse"
PASSWORD = "Envelope-pass-0123456789"  # runlease: allow secret-assignment,high-entropy-secret (test fixture)
CONN = {"conn_type": "postgres", "host": "db", "login": "etl", "password": PASSWORD}
STS = {"issuer": "aws-sts", "role_arn": "arn:aws:iam::123456789012:role/etl"}


def opened(text: str, version: int = 3, name: str = NAME):  # type: ignore[no-untyped-def]
    return open_secret_string(P, name, version, f"AWS Secrets Manager secret {name}", text)


@pytest.mark.parametrize("value", [CONN, "plain text", '{"runlease:envelope": 1}'])
def test_round_trip_keeps_value_and_settings(value: object) -> None:
    got = opened(seal(P, NAME, 3, STS, value))  # type: ignore[arg-type]
    assert (got.value, got.settings) == (value, STS)


def test_the_old_layout_is_a_bare_value_without_settings() -> None:
    assert (opened(json.dumps(CONN)).value, opened(json.dumps(CONN)).settings) == (CONN, None)
    assert opened(json.dumps("text")).settings is None


def test_an_object_value_cannot_carry_the_marker() -> None:
    with pytest.raises(InvalidValueError, match=ENVELOPE_KEY):
        seal(P, NAME, 1, {}, {**CONN, ENVELOPE_KEY: 1})


@pytest.mark.parametrize("version,name", [(4, NAME), (3, "runlease/prod/connections/other")])
def test_an_envelope_is_bound_to_its_secret_and_version(version: int, name: str) -> None:
    with pytest.raises(InvalidValueError, match="another secret or version"):
        opened(seal(P, NAME, 3, {"issuer": "static"}, CONN), version=version, name=name)


@pytest.mark.parametrize("edit", [
    lambda d: d.update({ENVELOPE_KEY: PASSWORD}),  # a format that is not a number: not echoed
    lambda d: d.update({PASSWORD: 1}),  # an unknown field: not named
    lambda d: d.pop("settings"),
    lambda d: d.update({"settings": [PASSWORD]}),
    lambda d: d.update({"version": "3"}),
    lambda d: d.update({"value": [PASSWORD]}),
])
def test_a_malformed_envelope_is_refused_without_echoing_its_text(edit) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(seal(P, NAME, 3, STS, CONN))
    edit(doc)
    with pytest.raises(InvalidValueError) as caught:
        opened(json.dumps(doc))
    message = str(caught.value)
    assert NAME in message and "version 3" in message and PASSWORD not in message
