"""Airflow-compatible connection values: a dict, an Airflow URI, or JSON.

A stored connection is the dict Airflow's secrets backends return in JSON
form (``conn_type, host, login, password, schema, port, extra``), so the
Airflow backend can hand it to ``Connection.from_json`` unchanged. The URI
codec follows Airflow's own ``Connection.get_uri`` / ``_parse_from_uri``
(airflow/models/connection.py, Airflow 3.3): ``-`` in the scheme means ``_``
in conn_type, ``postgresql`` means ``postgres``, a host may carry its own
protocol (``http://``), and extras that are not all strings travel as JSON in
the ``__extra__`` query parameter. It is a port, not an import, because the
core never imports Airflow.

Error messages name the part that failed and never echo the URI, which
usually holds a password.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runlease.errors import InvalidValueError

EXTRA_KEY = "__extra__"

#: Extra keys whose values are credentials and must be masked like a password (a key matches
#: when it *contains* one of these, case-insensitively). A superset of Airflow's own
#: ``DEFAULT_SENSITIVE_FIELDS`` (airflow/_shared/secrets_masker, Airflow 3.3), so a value
#: Airflow would hide is hidden by ``get``/``lease`` and the KFP output guard too.
SENSITIVE_EXTRA_WORDS: tuple[str, ...] = (
    "password", "passwd", "passphrase", "secret", "token", "bearer", "api_key", "apikey",
    "access_key", "private_key", "key_content", "keyfile_dict", "service_account", "service_key",
    "credential", "auth", "session", "dsn", "connection_string", "proxy", "proxies", "webhook_url",
)


class ConnectionValue(BaseModel):
    """Validated connection fields, with ``extra`` always a dict."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    conn_type: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    port: int | None = Field(default=None, ge=0, le=65535)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra", mode="before")
    @classmethod
    def _extra_from_json(cls, value: Any) -> Any:
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("extra is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise ValueError("extra must be a JSON object")
            return parsed
        return value

    def to_dict(self) -> dict[str, Any]:
        """The canonical stored form (Airflow's JSON connection shape)."""
        return self.model_dump(by_alias=True)


def _invalid(what: str, err: Exception | None = None) -> InvalidValueError:
    detail = ""
    if isinstance(err, ValidationError):
        # pydantic messages can echo input; keep only field locations and types.
        detail = ": " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'} {e['type']}" for e in err.errors()
        )
    return InvalidValueError(f"invalid connection {what}{detail}")


def connection_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a connection dict and return its canonical form."""
    if not isinstance(data, dict):
        raise InvalidValueError("invalid connection: expected a JSON object")
    try:
        return ConnectionValue.model_validate(data).to_dict()
    except ValidationError as err:
        raise _invalid("fields", err) from None


def connection_from_json(text: str) -> dict[str, Any]:
    """Parse Airflow's JSON connection format."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidValueError(f"invalid connection JSON at line {err.lineno} column {err.colno}") from None
    return connection_from_dict(data)


def _normalize_conn_type(conn_type: str) -> str:
    if conn_type == "postgresql":
        return "postgres"
    return conn_type.replace("-", "_")


def connection_from_uri(uri: str) -> dict[str, Any]:
    """Parse an Airflow connection URI (same rules as ``Connection._parse_from_uri``)."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidValueError("invalid connection URI: expected <conn-type>://[login[:password]@]host[:port][/schema][?extra]")
    schemes = uri.count("://")
    if schemes > 2:
        raise InvalidValueError("invalid connection URI: more than two '://' separators")
    host_with_protocol = schemes == 2
    try:
        scheme = urlsplit(uri).scheme
    except ValueError:
        raise InvalidValueError("invalid connection URI: cannot split scheme") from None
    if not scheme:
        raise InvalidValueError("invalid connection URI: missing conn type (the URI scheme)")
    rest = uri.replace(f"{scheme}://", "" if host_with_protocol else "//", 1)
    _refuse_cut_authority(rest)
    if host_with_protocol:
        protocol_part = rest.split("://", 1)[0]
        if "@" in protocol_part or ":" in protocol_part:
            raise InvalidValueError("invalid connection URI: malformed host protocol")
    try:
        parts = urlsplit(rest)
        port = parts.port
    except ValueError:
        raise InvalidValueError("invalid connection URI: port is not a number in 0-65535") from None
    protocol = parts.scheme if host_with_protocol else None
    host = unquote(parts.hostname or "")
    if "/" in host:  # a quoted host that carries its own protocol (Airflow's _parse_netloc_to_hostname)
        host = unquote(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0])
    if host and protocol:
        host = f"{protocol}://{host}"
    schema = unquote(parts.path[1:]) if parts.path[1:] else None
    extra: dict[str, Any] = {}
    if parts.query:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if EXTRA_KEY in query:
            try:
                extra = json.loads(query[EXTRA_KEY])
            except json.JSONDecodeError:
                raise InvalidValueError("invalid connection URI: __extra__ is not valid JSON") from None
        else:
            extra = _decode_query_extra(query)
    return connection_from_dict(
        {
            "conn_type": _normalize_conn_type(scheme),
            "host": host or None,
            "login": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "schema": schema,
            "port": port,
            "extra": extra,
        }
    )


def _refuse_cut_authority(rest: str) -> None:
    """Refuse a URI whose login or password holds an unencoded ``#``, ``?``, ``/`` or ``@``.

    Those characters end the authority, so a URI ending in ``etl:pa#ss@db/x`` would
    parse as host ``etl``, a fragment ``ss@db/x`` and no password at all: the
    password silently lost, its tail landing in other fields (and shown unmasked).
    Airflow URIs percent-encode every such character (``Connection.get_uri``), and
    never carry a fragment or a raw ``@`` after the host, so either sign means a
    hand-written URI that cannot be read without guessing: refused, never guessed.
    The message names the characters, never the URI.
    """
    body = rest[2:] if rest.startswith("//") else rest.split("://", 1)[-1]
    cut = min((i for i in (body.find("/"), body.find("?"), body.find("#")) if i >= 0), default=len(body))
    if "#" in body or "@" in body[cut:]:
        raise InvalidValueError(
            "invalid connection URI: the login or password seems to contain an unencoded '#', '?', '/' or '@' "
            "(or the URI has a '#' fragment, or a raw '@' after the host); percent-encode them "
            "(# as %23, ? as %3F, / as %2F, @ as %40), or give the connection as JSON"
        )


def _decode_query_extra(query: dict[str, str]) -> dict[str, Any]:
    """Flat query parameters as Airflow reads them: each value JSON-decoded when it parses."""
    extra: dict[str, Any] = {}
    for key, value in query.items():
        try:
            extra[key] = json.loads(value) if value else value
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def connection_to_uri(conn: dict[str, Any]) -> str:
    """Render a connection dict as an Airflow URI (same rules as ``Connection.get_uri``)."""
    c = ConnectionValue.model_validate(conn)
    uri = f"{c.conn_type.lower().replace('_', '-')}://" if c.conn_type else "//"
    host = c.host
    if host and "://" in host:
        protocol, bare = host.split("://", 1)
        if protocol != c.conn_type:
            uri += f"{protocol}://"
            host = bare
    authority = ""
    if c.login is not None:
        authority += quote(c.login, safe="")
    if c.password is not None:
        authority += ":" + quote(c.password, safe="")
    if authority:
        uri += authority + "@"
    host_block = quote(host, safe="") if host else ""
    if c.port:
        host_block += f"@:{c.port}" if not host_block and not authority else f":{c.port}"
    if c.schema_:
        host_block += f"/{quote(c.schema_, safe='')}"
    uri += host_block
    if c.extra:
        sep = "?" if c.schema_ else "/?"
        flat = all(isinstance(v, str) for v in c.extra.values())
        query = urlencode(c.extra) if flat else ""
        # Flatten only if the parser reads the query back to the same extras: it
        # JSON-decodes values, so {"api_key": "123"} must travel as __extra__.
        if flat and c.extra == _decode_query_extra(dict(parse_qsl(query, keep_blank_values=True))):
            uri += sep + query
        else:
            uri += sep + urlencode({EXTRA_KEY: json.dumps(c.extra)})
    return uri


def parse_connection(text: str) -> dict[str, Any]:
    """Parse user input that is either Airflow JSON (starts with ``{``) or a URI."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return connection_from_json(stripped)
    return connection_from_uri(stripped)


def sensitive_strings(conn: dict[str, Any]) -> list[str]:
    """The strings in a connection that are credentials: password and sensitive extras.

    These are what the redactor must mask. Non-sensitive fields (host, login,
    schema) stay readable in logs, as in Airflow.
    """
    found: list[str] = []
    if conn.get("password"):
        found.append(str(conn["password"]))
    _collect_sensitive(conn.get("extra") or {}, found, sensitive=False)
    return found


def _collect_sensitive(value: Any, found: list[str], sensitive: bool) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            key_l = str(key).lower()
            _collect_sensitive(item, found, sensitive or any(w in key_l for w in SENSITIVE_EXTRA_WORDS))
    elif isinstance(value, list):
        for item in value:
            _collect_sensitive(item, found, sensitive)
    elif sensitive and isinstance(value, str) and value:
        found.append(value)
    elif sensitive and isinstance(value, (int, float)) and not isinstance(value, bool):
        # A numeric token (URI query values are JSON-decoded) is still a credential.
        found.append(str(value))
