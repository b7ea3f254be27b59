"""Is this identifier the name of a secret?

Used for assignment targets, keyword arguments, dict keys, env-variable names and
parameter names. Names that *refer* to a secret (``secret_name``, ``password_env``,
``token_url``, ``api_key_path``) are not secrets themselves, so they are excluded:
that distinction is what keeps the generic rules quiet on well-written DAGs that
read their credentials from a backend.
"""

from __future__ import annotations

import re

# Names whose literal value is, by convention, the credential itself.
_SECRET_WORD = re.compile(
    r"(?:pass(?:word|wd|phrase)|pwd|(?:^|_)pw$|secret|token|api_?key|apikey|access_?key|"
    r"private_?key|auth_?key|signing_?key|encryption_?key|master_?key|fernet_?key|"
    r"client_?secret|credentials?|hmac_?key|sas_?key|account_?key|session_?key|"
    r"bearer)",
)

# Trailing words that make the name a reference, a setting or metadata about the
# secret rather than the secret.
_REFERENCE_SUFFIX = re.compile(
    r"(?:_|^)(?:name|names|id|ids|path|paths|file|files|filename|dir|arn|url|uri|endpoint|"
    r"env|var|envvar|env_var|ref|type|types|field|fields|prefix|suffix|length|len|size|"
    r"ttl|expiry|expires|expiration|expires_in|header|mode|backend|kwargs|class|cls|"
    r"location|conn_id|key_name|secret_name|template|format|regex|pattern|label|"
    r"provider|manager|store|count|hash|policy|scope|scopes|version|stage|source|"
    r"loader|getter|callback|method|kind|key_id|keyid|required|enabled|len|"
    r"placeholder|description|help|prompt|limit|timeout|rotation|lifetime|used|"
    r"usage|param|params|arg|args|attr|column|col|table|schema|query|index|"
    r"mask|masked|redacted|policy_document|info)$"
)

# Words that make a secret-looking name public or not a credential at all:
# public keys, CSRF/XSRF anti-forgery tokens (per session, issued to every visitor).
_NOT_A_CREDENTIAL = re.compile(r"(?:^|_)(?:public|publishable|pub|csrf|xsrf)(?:_|$)")
# "<qualifier>_key" names that are data-structure keys, not cryptographic keys.
_DATA_KEY = re.compile(
    r"(?:^|_)(?:primary|foreign|cache|sort|partition|row|dict|lookup|idempotency|unique|composite|"
    r"hash|range|object|s3|xcom|redis|map|group|dedup|join|index|shard|routing|message|config|"
    r"setting|translation|i18n|hotkey|shortcut|keyboard)_key$"
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def normalize_name(name: str) -> str:
    """snake_case, lower-case form: ``apiKey``/``API-KEY``/``Api Key`` -> ``api_key``."""
    name = _CAMEL.sub("_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def is_secret_name(name: str) -> bool:
    """True when a literal bound to ``name`` is expected to be a credential."""
    norm = normalize_name(name)
    if not norm or not _SECRET_WORD.search(norm):
        return False
    if _NOT_A_CREDENTIAL.search(norm):
        return False
    if _REFERENCE_SUFFIX.search(norm):
        return False
    # "no_auth", "use_token", "is_secret": booleans and flags, not values.
    if re.match(r"^(?:no|use|is|has|should|enable|disable|with|without|skip|requires?)_", norm):
        return False
    return True


def is_keyish_name(name: str) -> bool:
    """Looser test for the entropy rule: ``*_key``, ``*_salt`` ... names also count.

    A random literal in ``fernet_key`` or ``salt`` is as secret as one in ``token``;
    requiring high entropy for these names is what keeps ``primary_key = "id"`` quiet.
    The word must end the name (``key_down_event`` is an event name, ``key`` alone a
    dict or object key), and public keys and data-structure keys do not count.
    """
    if is_secret_name(name):
        return True
    norm = normalize_name(name)
    if norm in ("key", "keys") or _NOT_A_CREDENTIAL.search(norm) or _DATA_KEY.search(norm):
        return False
    # Allowed after the word: a version (key_v2, key2) or an encoding (aes_key_hex, hmac_sig_b64).
    return bool(
        re.search(r"(?:^|_)(?:key|salt|signature|sig|cookie)(?:_?v?\d+)?(?:_(?:b64|base64|hex|pem|bytes|raw))?$", norm)
    )


def is_password_name(name: str) -> bool:
    """Names of human-chosen secrets (passwords), which may be plain words."""
    return bool(re.search(r"pass(?:word|wd|phrase)|pwd|(?:^|_)pw$", normalize_name(name)))
