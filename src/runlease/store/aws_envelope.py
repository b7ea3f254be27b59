"""The SecretString of a runlease-written AWS version: the value *and* the settings it was written with.

Why: a lease needs the value and the issuer settings that go with it
(``issuer`` and its options). Tags hold settings per *secret*, so reading
them costs a ``DescribeSecret`` next to every first ``GetSecretValue``. A
version's SecretString is immutable and comes back with its VersionId and
stage labels in one ``GetSecretValue``, so runlease writes it as an
envelope::

    {"runlease:envelope": 1,
     "secret": "runlease/prod/connections/warehouse", "version": 7,
     "settings": {"issuer": "aws-sts", "role_arn": "arn:aws:iam::...:role/etl"},
     "value": {"conn_type": "aws", "login": "...", "password": "..."}}

- ``runlease:envelope`` is the format number and the marker. No value can
  carry it: a connection is a JSON object whose keys are validated
  (``extra="forbid"``: conn_type, host, login, ...), any other value is a JSON
  *string*, and ``put`` refuses an object that holds the marker anyway.
- ``secret`` and ``version`` bind the envelope to the AWS secret name and to
  the VersionId it is stored under (``runlease-v<N>``): a SecretString copied
  to another secret or re-put as another version (say, an old ``static``
  version over a secret that is now ``aws-sts``) is refused as malformed,
  never read under the settings it carried.
- ``settings`` are the version's lease settings at put time: the secret's
  settings then, with what the put itself set on top. Rotation policy and
  state (``rotation``, ``rotation_state``) are not in it: they describe the
  secret, change without a new version, and are read with ``DescribeSecret``
  (``resolve``/``info``), as before.

A SecretString that is not such an object is a version written before this
format (or outside runlease) and is read the old way (value in the
SecretString, settings from the tags).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runlease.errors import InvalidValueError
from runlease.models import SecretPath, SecretValue
from runlease.store.codec import check_value, decoded, malformed, parse_stored_json

#: Marker key and format number of an envelope.
ENVELOPE_KEY = "runlease:envelope"
FORMAT = 1
_FIELDS = frozenset({ENVELOPE_KEY, "secret", "version", "settings", "value"})


@dataclass(frozen=True)
class Opened:
    """What a SecretString held: the value, and the settings when it was an envelope (else None)."""

    value: SecretValue = field(repr=False)
    settings: dict[str, Any] | None = None


def seal(path: SecretPath, name: str, version: int, settings: dict[str, Any], value: SecretValue) -> str:
    """The SecretString for version ``version`` of secret ``name``: compact JSON, keys sorted."""
    check_value(path, value)
    if isinstance(value, dict) and ENVELOPE_KEY in value:
        raise InvalidValueError(f"secret value for {path} must not contain the key {ENVELOPE_KEY!r} "
                                "(it marks runlease's own AWS layout)")
    doc = {ENVELOPE_KEY: FORMAT, "secret": name, "version": version, "settings": settings, "value": value}
    try:
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        raise InvalidValueError(f"secret value or settings for {path} are not JSON-serializable") from None


def open_secret_string(path: SecretPath, name: str, version: int, where: str, text: Any) -> Opened:
    """Parse a version's SecretString: an envelope (checked against ``name``/``version``) or a bare value.

    Errors name the secret, version and what is wrong -- never the text.
    """
    doc = parse_stored_json(path, version, where, text)
    if not isinstance(doc, dict) or ENVELOPE_KEY not in doc:
        return Opened(decoded(path, version, where, doc))
    found = doc[ENVELOPE_KEY]
    if type(found) is not int or found != FORMAT:
        shown = found if type(found) is int else f"a {type(found).__name__}"  # never echo stored text
        raise malformed(path, version, where, f"envelope format {shown} is not {FORMAT} "
                        "(written by a newer runlease?)")
    if set(doc) != _FIELDS:
        # Unknown keys are not named: they are text from the SecretString (a credential, by mistake).
        missing, unknown = sorted(_FIELDS - set(doc)), len(set(doc) - _FIELDS)
        raise malformed(path, version, where, f"its envelope fields are not {sorted(_FIELDS)} "
                        f"(missing {missing or 'none'}, {unknown} unknown)")
    if doc["secret"] != name or doc["version"] != version or type(doc["version"]) is not int:
        # Copied from another secret or re-put under another version: its settings were not written for this one.
        raise malformed(path, version, where, "its envelope was written for another secret or version "
                        "(copied or forged outside runlease)")
    settings = doc["settings"]
    if not isinstance(settings, dict):
        raise malformed(path, version, where, "its envelope's settings are not an object")
    return Opened(decoded(path, version, where, doc["value"]), settings)
