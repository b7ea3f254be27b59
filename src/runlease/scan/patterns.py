"""Regex detectors for known credential formats and for text (non-Python) files.

Each detector runs one compiled regex over the whole file only when the
prefilter saw its keywords, then validates candidates (checksum-like structure,
example values, placeholders) before returning :class:`Hit` spans. Python files
get their assignments judged by :mod:`runlease.scan.python_ast`; the line-based
assignment detectors here cover YAML, .env, INI/TOML, JSON, shell and notebooks,
and Python files that do not parse.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote

from .checksums import has_crc32_suffix
from .entropy import looks_random
from .models import Hit
from .names import is_keyish_name, is_password_name, is_secret_name
from .prefilter import PrefilterResult
from .textindex import TextIndex
from .values import is_placeholder, is_placeholder_token, looks_like_token

# --- known formats -----------------------------------------------------------

AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Za-z0-9])")
AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_SECRET_NAME = re.compile(r"aws_?secret|secret_?access_?key", re.IGNORECASE)
PRIVATE_KEY_HEADER = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----")
GITHUB_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:(?P<gh_prefix>gh[pousr]_)(?P<gh_body>[A-Za-z0-9]{36})"
    r"|github_pat_(?P<pat_body>[A-Za-z0-9]{22}_[A-Za-z0-9]{59}))(?![A-Za-z0-9_])"
)
GITLAB_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])(?:gl(?:pat|dt|rt|rtr|ptt|ft|soat|cbt|imt|oas|agent|ffct|wt)-"
    r"(?P<gl_body>[A-Za-z0-9_-]{20,}(?:\.[A-Za-z0-9_-]+)*)|GR1348941(?P<gr_body>[A-Za-z0-9_-]{20}))(?![A-Za-z0-9_.-])"
)
SLACK_TOKEN = re.compile(
    r"(?<![A-Za-z0-9-])(?:xoxe\.xox[bp]-\d-(?P<cfg_body>[A-Za-z0-9]{100,})|xoxe-\d-(?P<ref_body>[A-Za-z0-9]{100,})"
    r"|xox[abposr]-(?P<tok_body>[0-9A-Za-z]{8,}(?:-[0-9A-Za-z]+)+)|xapp-\d-(?P<app_body>[A-Z0-9]+-\d+-[a-z0-9]{32,}))"
    r"|https?://hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"(?P<hook_body>T[A-Z0-9]{6,}/[AB][A-Z0-9]{6,}/[A-Za-z0-9]{16,})"
)
# Signed (16+ signature chars) or unsigned ("alg": "none", empty signature).
JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.(?:[A-Za-z0-9_-]{16,})?(?![A-Za-z0-9_.-])"
)
# Quotes may be JSON-escaped (\\") when the key file sits inside a string literal,
# e.g. Connection(extra='{"keyfile_dict": "{\\"type\\": \\"service_account\\", ...}"}').
_Q = r"""\\*["']"""
GCP_SA_TYPE = re.compile(_Q + "type" + _Q + r"\s*:\s*" + _Q + "service_account" + _Q)
GCP_KEY_ID = re.compile(_Q + "private_key_id" + _Q + r"\s*:\s*" + _Q + r"([0-9a-f]{40})" + _Q)
# scheme://user:password@host — the password group is the secret; user, host and
# database name (captured in a lookahead, so they are not part of the match) let
# documentation defaults such as postgres://airflow:airflow@localhost/airflow pass.
URI_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{1,30}://"
    r"(?P<user>[^\s:@/'\"`<>{}()\[\]\\]{0,64}):(?P<pw>[^\s@/'\"`\\]{1,128})@"
    r"(?=(?P<host>[A-Za-z0-9\[][^\s/'\"`?#@]*)(?:/(?P<db>[A-Za-z0-9_.-]+))?)"
)
_URI_PLACEHOLDER_PW = re.compile(
    r"^(?:pass(?:word|wd)?|pwd|secret|token|x+|\*+|\.+|changeme|user|username|"
    r"[<{$%\[].*|.*[>}\]]|port|\d{1,5})$",
    re.IGNORECASE,
)


def is_placeholder_uri_password(pw: str) -> bool:
    """``:password@``, ``:${PW}@``, ``:my-password@``, ``:my-pa%2Fssword@``, ``:***@`` and friends."""
    low = unquote(pw).lower()
    letters = re.sub(r"[^a-z0-9]", "", low)
    return bool(_URI_PLACEHOLDER_PW.match(pw)) or any(
        word in low or word in letters for word in ("example", "passw", "secret", "changeme", "placeholder", "xxx")
    )


def is_default_uri_password(match: re.Match[str]) -> bool:
    """A password equal to the user, a host label or the database name.

    ``amqp://guest:guest@rabbitmq``, ``mysql://airflow:airflow@localhost/airflow``:
    the public defaults of Docker images and documentation, which anyone can
    guess, not a secret someone leaked. (A weak password, but not a finding for a
    secret scanner.)
    """
    pw = unquote(match.group("pw")).lower()
    names = {unquote(match.group("user") or "").lower()}
    host = (match.group("host") or "").lower().split(":", 1)[0]
    names.update(host.split("."))
    names.add((match.group("db") or "").lower())
    return pw in names


def _is_real_uri_password(match: re.Match[str]) -> bool:
    return not is_placeholder_uri_password(match.group("pw")) and not is_default_uri_password(match)


def uri_password_span(value: str) -> tuple[int, int] | None:
    """(start, end) of a real inline password in ``value``, if there is one."""
    for match in URI_CREDENTIALS.finditer(value):
        if _is_real_uri_password(match):
            return match.span("pw")
    return None


def _finditer_hits(index: TextIndex, regex: re.Pattern[str], rule_id: str, group: int | str = 0,
                   accept: Callable[[re.Match[str]], bool] | None = None) -> list[Hit]:
    hits: list[Hit] = []
    for match in regex.finditer(index.text):
        if accept is not None and not accept(match):
            continue
        start, end = match.span(group)
        line, col = index.position(start)
        hits.append(Hit(rule_id, line, col, index.span_end_on_line(start, end)))
    return hits


def detect_aws(index: TextIndex) -> list[Hit]:
    """Access key ids, and 40-char secrets near a key id or named like one."""
    hits = _finditer_hits(
        index, AWS_KEY_ID, "aws-access-key-id", accept=lambda m: not is_placeholder_token(m.group()[4:])
    )
    id_lines = {hit.line for hit in hits}
    for match in AWS_SECRET.finditer(index.text):
        value = match.group()
        if is_placeholder_token(value) or not (
            any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
        ):
            continue
        start, end = match.span()
        line, col = index.position(start)
        near_id = any(abs(line - other) <= 5 for other in id_lines)
        if near_id or AWS_SECRET_NAME.search(index.line_text(line)):
            hits.append(Hit("aws-secret-access-key", line, col, index.span_end_on_line(start, end)))
    return hits


_KEY_BODY_NOISE = re.compile(r"(?:\\n|\\r|[\s\"'+,]|Proc-Type:[^\n]*|DEK-Info:[^\n]*)+")


def detect_private_keys(index: TextIndex) -> list[Hit]:
    """PEM/OpenSSH/PGP private key headers followed by a real base64 body.

    The header alone (``startswith("-----BEGIN PRIVATE KEY-----")`` in a parser)
    is not a key; requiring 64+ base64 characters after it keeps such code quiet.
    """
    hits: list[Hit] = []
    text = index.text
    for match in PRIVATE_KEY_HEADER.finditer(text):
        tail = _KEY_BODY_NOISE.sub("", text[match.end(): match.end() + 600])
        if len(re.match(r"[A-Za-z0-9+/=]*", tail).group()) < 64:
            continue
        line, _col = index.position(match.start())
        header_end = index.position(match.end())[1]
        hits.append(Hit("private-key", line, header_end, None))
    return hits


def _jwt_is_valid(match: re.Match[str]) -> bool:
    """The header decodes to a JOSE header; an unsigned token must say ``"alg": "none"``."""
    header, _payload, signature = match.group().split(".", 2)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    if not isinstance(decoded, dict) or not ("alg" in decoded or "typ" in decoded):
        return False
    if not signature:
        return str(decoded.get("alg", "")).lower() == "none"
    return not is_placeholder_token(signature)


def _real_body(*groups: str) -> Callable[[re.Match[str]], bool]:
    """Accept a match when the random part in the first present group is not a placeholder."""

    def accept(match: re.Match[str]) -> bool:
        for group in groups:
            body = match.group(group)
            if body is not None:
                return not is_placeholder_token(re.sub(r"[-/._]", "", body))
        return False

    return accept


def _github_is_real(match: re.Match[str]) -> bool:
    """Classic tokens carry a CRC32 checksum; fine-grained ones are judged by randomness."""
    if match.group("gh_body") is not None:
        return has_crc32_suffix(match.group("gh_prefix"), match.group("gh_body"))
    return not is_placeholder_token(match.group("pat_body").replace("_", ""))


def detect_gcp_service_account(index: TextIndex) -> list[Hit]:
    """A service-account key: ``"type": "service_account"`` plus a private_key_id."""
    if not GCP_SA_TYPE.search(index.text):
        return []
    return _finditer_hits(index, GCP_KEY_ID, "gcp-service-account", group=1)


def detect_uri_credentials(index: TextIndex) -> list[Hit]:
    """scheme://user:password@host with a literal (non-placeholder) password."""

    return _finditer_hits(
        index,
        URI_CREDENTIALS,
        "connection-uri-credentials",
        group="pw",
        accept=_is_real_uri_password,
    )


FORMAT_DETECTORS: tuple[tuple[str, Callable[[TextIndex], list[Hit]]], ...] = (
    ("aws", detect_aws),
    ("private_key", detect_private_keys),
    ("github", lambda index: _finditer_hits(index, GITHUB_TOKEN, "github-token", accept=_github_is_real)),
    (
        "gitlab",
        lambda index: _finditer_hits(index, GITLAB_TOKEN, "gitlab-token", accept=_real_body("gl_body", "gr_body")),
    ),
    (
        "slack",
        lambda index: _finditer_hits(
            index, SLACK_TOKEN, "slack-token", accept=_real_body("cfg_body", "ref_body", "tok_body", "app_body", "hook_body")
        ),
    ),
    ("jwt", lambda index: _finditer_hits(index, JWT, "jwt", accept=_jwt_is_valid)),
    ("gcp", detect_gcp_service_account),
    ("uri", detect_uri_credentials),
)


def detect_formats(index: TextIndex, prefiltered: PrefilterResult) -> list[Hit]:
    """Run every known-format detector whose keywords the prefilter saw."""
    hits: list[Hit] = []
    for group, detector in FORMAT_DETECTORS:
        if group in prefiltered:
            hits.extend(detector(index))
    return hits


# --- assignments in text files ----------------------------------------------

# name = value / name: value / "name": "value" / NAME=value, with optional
# JSON-escaped quotes (\") as found inside .ipynb sources.
ASSIGNMENT = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\\?["'])?\s*(?::=|=>|=|:)\s*"""
    r"""(?:"(?P<v1>[^"\n]{1,512})"|'(?P<v2>[^'\n]{1,512})'|\\"(?P<v3>[^"\\\n]{1,512})\\"|(?P<v4>[^\s"'#,;}\]\\]{1,512}))"""
)
AIRFLOW_CONN_ASSIGNMENT = re.compile(
    r"""(?P<name>AIRFLOW_CONN_[A-Z0-9_]+)(?:\\?["'])?\s*(?:=|:)\s*"""
    r"""(?:"(?P<v1>[^"\n]{1,2048})"|'(?P<v2>[^'\n]{1,2048})'|(?P<v4>[^\s"'#]{1,2048}))"""
)
YAML_ENV_NAME = re.compile(r"""^\s*-?\s*name:\s*["']?(?P<name>[A-Za-z_][A-Za-z0-9_]*)["']?\s*$""")
YAML_ENV_VALUE = re.compile(r"""^\s*value:\s*(?:"(?P<v1>[^"\n]+)"|'(?P<v2>[^'\n]+)'|(?P<v4>[^\s"'#]+))\s*$""")


def _value_group(match: re.Match[str]) -> str:
    for group in ("v1", "v2", "v3", "v4"):
        if match.re.groupindex.get(group) and match.group(group) is not None:
            return group
    raise ValueError("assignment regex matched without a value group")


def classify_literal(name: str, value: str) -> str | None:
    """Rule id for ``value`` bound to ``name``, or None when it is not a secret.

    High entropy wins over the plain name test so that random keys in loosely
    named variables (``fernet_key``) are reported, and words in strictly named
    ones (``password = "hunter22"``) are reported as generic assignments.
    """
    if is_keyish_name(name) and looks_random(value) and not is_placeholder(value):
        return "high-entropy-secret"
    if is_secret_name(name) and not is_placeholder(value, name):
        if is_password_name(name) or looks_like_token(value):
            return "secret-assignment"
    return None


def connection_value_has_credentials(value: str) -> bool:
    """True for an Airflow connection value (URI or JSON) that embeds a secret."""
    if uri_password_span(value) is not None:
        return True
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return False
        return isinstance(data, dict) and _json_has_secret(data)
    return False


def _json_has_secret(data: dict) -> bool:
    for key, val in data.items():
        if isinstance(val, dict) and _json_has_secret(val):
            return True
        if isinstance(val, str) and (
            classify_literal(str(key), val) is not None or uri_password_span(val) is not None
        ):
            return True
    return False


def _lines_with(index: TextIndex, offsets: Iterable[int]) -> list[int]:
    return sorted({index.line_of(offset) for offset in offsets})


def detect_text_assignments(
    index: TextIndex, prefiltered: PrefilterResult, *, quoted_only: bool = False
) -> list[Hit]:
    """Secret-named keys with literal values in config-like text, line by line.

    Only lines holding a secret-name keyword are examined. ``quoted_only`` is for
    Python that failed to parse, where an unquoted right-hand side is an expression.
    """
    hits: list[Hit] = []
    lines = index.lines
    for line_no in _lines_with(index, prefiltered.offsets.get("secret_name", ())):
        line = lines[line_no - 1]
        for match in ASSIGNMENT.finditer(line):
            group = _value_group(match)
            if quoted_only and group == "v4":
                continue
            rule = classify_literal(match.group("name"), match.group(group))
            if rule is not None:
                hits.append(Hit(rule, line_no, match.start(group), match.end(group)))
    # Kubernetes/KFP YAML env lists: "- name: DB_PASSWORD" then "value: ...".
    if "secret_name" in prefiltered:
        for line_no in _lines_with(index, prefiltered.offsets["secret_name"]):
            name_match = YAML_ENV_NAME.match(lines[line_no - 1])
            if not name_match or not is_secret_name(name_match.group("name")):
                continue
            for next_no in (line_no + 1, line_no + 2):
                value_match = YAML_ENV_VALUE.match(index.line_text(next_no))
                if value_match:
                    group = _value_group(value_match)
                    rule = classify_literal(name_match.group("name"), value_match.group(group))
                    if rule is not None:
                        hits.append(Hit(rule, next_no, value_match.start(group), value_match.end(group)))
                    break
    return hits


def detect_airflow_conn_text(index: TextIndex, prefiltered: PrefilterResult) -> list[Hit]:
    """``AIRFLOW_CONN_X=...`` in .env, YAML, shell or Dockerfiles with credentials."""
    hits: list[Hit] = []
    lines = index.lines
    for line_no in _lines_with(index, prefiltered.offsets.get("airflow_conn", ())):
        line = lines[line_no - 1]
        for match in AIRFLOW_CONN_ASSIGNMENT.finditer(line):
            group = _value_group(match)
            if connection_value_has_credentials(match.group(group)):
                hits.append(Hit("airflow-conn-env-literal", line_no, match.start(group), match.end(group)))
    return hits


# Every known-format regex, for scrubbing excerpts as a last line of defence.
SCRUB_PATTERNS: tuple[re.Pattern[str], ...] = (
    AWS_KEY_ID,
    GITHUB_TOKEN,
    GITLAB_TOKEN,
    SLACK_TOKEN,
    JWT,
)
