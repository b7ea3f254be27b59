"""Does this literal look like a real credential, or like a placeholder?

The generic rules (``secret-assignment``, the Airflow/KFP literal rules and the
.env template rule) fire on *literals* bound to secret names. Most such literals
in healthy code are not secrets at all: Jinja templates (``{{ conn.x.password }}``),
env lookups (``${DB_PASSWORD}``), names of other variables, prose in help texts,
documentation placeholders. Recognising those is what makes the rules usable.
"""

from __future__ import annotations

import re

from .entropy import shannon_entropy

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


# --- placeholders in known-format tokens --------------------------------------

# Long words only: a short one ("your", "fake") turns up inside random letters
# often enough to cost recall; short ones count only at a word boundary.
_TOKEN_PLACEHOLDER_WORDS = (
    "xxxx", "****", "....", "example", "replace", "dummy", "sample", "placeholder",
    "redacted", "insert", "changeme", "notreal",
)
_TOKEN_PLACEHOLDER_SHORT = re.compile(r"(?:^|[_\-.])(?:your|fake|test|my|here)(?:[_\-.]|$)", re.IGNORECASE)
_RUN_OF_SAME = re.compile(r"(.)\1{5,}")
_ASCENDING = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _has_sequence(body: str, run: int = 6) -> bool:
    """``123456``, ``abcdef``: typed by a person writing docs, not drawn by an RNG."""
    for alphabet in _ASCENDING:
        for start in range(len(alphabet) - run + 1):
            if alphabet[start: start + run] in body:
                return True
    return False


def is_placeholder_token(body: str) -> bool:
    """True when a token's random part (prefix removed) is a placeholder.

    ``ghp_xxxxxxxx...``, ``AKIAXXXXXXXXXXXXXXXX``, ``xoxb-0000000000-...``,
    ``hf_abcdefghij...``, ``<your-key>``: the shape is right, the randomness is
    not. Real tokens are drawn from an RNG: many distinct characters, no long runs
    of one character, no typed sequences, entropy near the alphabet's.
    """
    low = body.lower()
    if any(word in low for word in _TOKEN_PLACEHOLDER_WORDS) or _TOKEN_PLACEHOLDER_SHORT.search(body):
        return True
    if any(ch in body for ch in "<>{}$%"):
        return True
    if _RUN_OF_SAME.search(body) or _has_sequence(body):
        return True
    distinct = len(set(body))
    if distinct < min(10, max(4, len(body) // 3)):
        return True
    # Random base62 has ~5.9 bits/char, hex 4; 16 random hex chars give ~3.4.
    return len(body) >= 16 and shannon_entropy(body) < 3.0
