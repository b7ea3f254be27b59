"""Does this literal look like a real credential, or like a placeholder?

The generic rules (``secret-assignment``, the Airflow/KFP literal rules and the
.env template rule) fire on *literals* bound to secret names. Most such literals
in healthy code are not secrets at all: Jinja templates (``{{ conn.x.password }}``),
env lookups (``${DB_PASSWORD}``), names of other variables, prose in help texts,
documentation placeholders. Recognising those is what makes the rules usable.
"""

from __future__ import annotations

import re

_PLACEHOLDER_WORDS = (
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "example",
    "dummy",
    "redacted",
    "masked",
    "your_",
    "your-",
    "yourpassword",
    "yourtoken",
    "insert",
    "replace",
    "todo",
    "fixme",
    "notset",
    "not_set",
    "not-set",
    "undefined",
    "fake",
    "sample",
    "xxxx",
    "****",
    "....",
    "<",
    "${",
    "$(",
    "{{",
    "{%",
    "%(",
    "%s",
    "{0}",
    "{}",
)

_TRIVIAL = frozenset(
    {
        "none",
        "null",
        "nil",
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "apikey",
        "api_key",
        "bearer",
        "basic",
        "oauth",
        "oauth2",
        "jwt",
        "string",
        "str",
        "bytes",
        "value",
        "default",
        "empty",
        "test",
        "required",
        "optional",
        "hidden",
        "sensitive",
        "secure",
        "text",
        "env",
        "file",
        "vault",
        "aws",
        "gcp",
        "azure",
        "kubernetes",
        "k8s",
        "local",
    }
)

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # another variable's name, e.g. "GITHUB_TOKEN"
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z_]*(?:[.:/][A-Za-z_-]+)+$")  # module.attr, a/b, List.NextMarker
_REGEX_SYNTAX = re.compile(r"\(\?|\\[bdswBDSW]|\[\^|\|\(|\)\|")  # (?:, \b, [^, |(, )|
_SNAKE_WORDS = re.compile(r"^_*[a-z]+(?:_+[a-z]+)*_+$|^_*[a-z]+(?:_+[a-z]+)+_*$")  # conn ids: "postgres_default"
_NAMEISH_WORDS = ("passw", "secret", "token", "credential", "apikey", "api_key")
_FUNCTION_CALL = re.compile(r"^[A-Za-z_][\w.]*\(.*\)$")
_CAMEL_WORDS = re.compile(r"^[A-Z]?[a-z]+(?:[A-Z][a-z]+)+$")  # "NextToken", "Marker": API field names


def is_placeholder(value: str, name: str | None = None) -> bool:
    """True when ``value`` is clearly not a credential (template, lookup, prose, ...)."""
    stripped = value.strip().strip("\"'")
    if len(stripped) < 6:
        return True
    low = stripped.lower()
    if low in _TRIVIAL:
        return True
    if any(word in low for word in _PLACEHOLDER_WORDS):
        return True
    if any(ch.isspace() for ch in stripped) or not stripped.isascii():
        return True  # prose: help texts, descriptions, SQL, UI translations
    if len(set(stripped)) <= 2:
        return True  # "xxxxxx", "000000"
    if (
        _ENV_NAME.match(stripped)
        or _SNAKE_WORDS.match(stripped)
        or _DOTTED_NAME.match(stripped)
        or _CAMEL_WORDS.match(stripped)
    ):
        return True
    if _FUNCTION_CALL.match(stripped) or _REGEX_SYNTAX.search(stripped):
        return True  # an expression or a regular expression
    if re.fullmatch(r"[A-Za-z_.\-]+", stripped) and (
        stripped.startswith(".") or any(word in low for word in _NAMEISH_WORDS)
    ):
        return True  # "Passwords", ".module.attr", "secrets_backend": labels, not values
    if stripped.startswith(("/", "./", "../", "~/", "http://", "https://", "file:", "s3://", "gs://")):
        return "@" not in stripped  # a path or URL; URLs with userinfo are judged elsewhere
    if re.search(r"\.(?:json|ya?ml|pem|key|txt|cfg|ini|env|crt|p12|pfx|jks)$", low):
        return True  # a file name that holds the secret, not the secret
    if name is not None:
        norm_value = re.sub(r"[^a-z0-9]", "", low)
        norm_name = re.sub(r"[^a-z0-9]", "", name.lower())
        if norm_value and (norm_value in norm_name or norm_name in norm_value):
            return True  # password = "db_password": a key name, not a value
    return False


def looks_like_token(value: str) -> bool:
    """Tokens and keys are machine-made: letters *and* digits, or long.

    A password can be a word ("airflow" is a real, bad password); a token cannot,
    so ``upgrade_token = "upgrades"`` is a label, not a credential.
    """
    return (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)) or len(value) >= 20


def looks_real(value: str, name: str | None = None) -> bool:
    """Opposite of :func:`is_placeholder`, for readability at call sites."""
    return not is_placeholder(value, name)
