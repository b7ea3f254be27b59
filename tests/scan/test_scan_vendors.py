"""Vendor formats by value: every rule finds a generated sample under a neutral name,
in Python, .env and plain text, and none fires on the placeholder of the same shape.

Samples are generated at run time (``scan_corpus.Fakes``), so this file holds no
credential-shaped literal apart from placeholders, which must stay unreported.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from scan_corpus import ALNUM, HEX, Fakes, crc32_base62

from runlease.scan import scan_text
from runlease.scan.checksums import has_crc32_suffix, is_pypi_macaroon
from runlease.scan.values import is_placeholder_token

FK = Fakes(2024)

# rule id, Fakes method, length of the fixed prefix the placeholder keeps.
VENDOR_SAMPLES = [
    ("openai-api-key", "openai", 8),
    ("openai-api-key", "openai_legacy", 3),
    ("anthropic-api-key", "anthropic", 13),
    ("huggingface-token", "huggingface", 3),
    ("wandb-api-key", "wandb", 9),
    ("stripe-secret-key", "stripe", 8),
    ("stripe-secret-key", "stripe_webhook", 6),
    ("gcp-api-key", "gcp_api_key", 4),
    ("databricks-token", "databricks", 4),
    ("twilio-api-key", "twilio_api_key", 2),
    ("sendgrid-api-key", "sendgrid", 3),
    ("npm-token", "npm", 4),
    ("pypi-token", "pypi", 20),
    ("notion-token", "notion", 4),
    ("replicate-token", "replicate", 3),
    ("groq-api-key", "groq", 4),
    ("langsmith-api-key", "langsmith", 8),
    ("github-token", "github", 4),
    ("github-token", "github_fine_grained", 11),
    ("gitlab-token", "gitlab_any", 6),
    ("slack-token", "slack", 5),
    ("slack-token", "slack_config", 12),
    ("slack-token", "slack_legacy", 5),
    ("slack-token", "slack_webhook", 34),
    ("jwt", "jwt", 0),
    ("jwt", "unsigned_jwt", 0),
    ("aws-access-key-id", "aws_key_id", 4),
]

LINES = {
    "settings.py": 'KEY = "{value}"\n',
    "service.env": "KEY={value}\n",
    "notes.txt": 'KEY = "{value}"\n',
}


def found(text: str, path: str) -> set[str]:
    return {f.rule_id for f in scan_text(text, path) if f.rule_id != "dotenv-file"}


@pytest.mark.parametrize(("rule_id", "method", "_prefix"), VENDOR_SAMPLES, ids=[m for _, m, _ in VENDOR_SAMPLES])
def test_sample_is_found_by_value_in_py_env_and_txt(rule_id: str, method: str, _prefix: int) -> None:
    for _ in range(3):
        value = getattr(FK, method)()
        for path, template in LINES.items():
            assert found(template.format(value=value), path) == {rule_id}, (method, path)


@pytest.mark.parametrize(("rule_id", "method", "prefix"), VENDOR_SAMPLES, ids=[m for _, m, _ in VENDOR_SAMPLES])
@pytest.mark.parametrize("filler", ["x", "X", "0"])
def test_placeholder_of_the_same_shape_is_not_found(rule_id: str, method: str, prefix: int, filler: str) -> None:
    value = getattr(FK, method)()
    if method in ("jwt", "unsigned_jwt"):
        header, payload, _sig = value.split(".")
        placeholder = f"{header}.{payload}.{'x' * 43}" if method == "jwt" else f"eyJ{'x' * 20}.eyJ{'x' * 30}."
    else:
        placeholder = value[:prefix] + re.sub(r"[A-Za-z0-9]", filler, value[prefix:])
    for path, template in LINES.items():
        assert found(template.format(value=placeholder), path) == set(), (method, path, filler)


def test_documented_placeholders_are_not_found() -> None:
    text = "\n".join(
        [
            'GH = "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',
            'GL = "glpat-XXXXXXXXXXXXXXXXXXXX"',
            'SL = "xoxb-xxxxxxxxxxx-xxxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx"',
            'AWS = "AKIAXXXXXXXXXXXXXXXX"',
            'AWS2 = "AKIAIOSFODNN7EXAMPLE"',
            'HF = "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"',
            'DB = "dapi0123456789abcdef0123456789abcdef"',
            'OA = "sk-proj-YOUR_OPENAI_API_KEY_HERE_YOUR_OPENAI_API_KEY_HERE_0000"',
        ]
    )
    for path in ("a.py", "a.txt", "a.yaml"):
        assert found(text, path) == set(), path


def test_bearer_token_inside_a_headers_dict() -> None:
    hf = FK.huggingface()
    src = f'requests.get(url, headers={{"Authorization": "Bearer {hf}"}})\n'
    (finding,) = scan_text(src, "hub.py")
    assert finding.rule_id == "huggingface-token"
    assert hf not in finding.model_dump_json() and hf[:8] not in finding.excerpt


def test_service_account_json_escaped_inside_connection_extra() -> None:
    sa = FK.gcp_service_account_json()
    extra = json.dumps(json.dumps({"keyfile_dict": json.dumps(sa)}))[1:-1]
    src = f'from airflow.models import Connection\nc = Connection(conn_id="gcp", extra="{extra}")\n'
    rules = {f.rule_id for f in scan_text(src, "dag.py")}
    assert "gcp-service-account" in rules


def test_legacy_wandb_key_needs_wandb_on_the_line() -> None:
    key = FK.wandb_legacy()
    assert found(f'wandb.login(key="{key}")\n', "train.py") == {"wandb-api-key"}
    assert found(f'WANDB_API_KEY={key}\n', "run.sh") >= {"wandb-api-key"}
    assert found(f'COMMIT = "{key}"\n', "build.py") == set()  # a SHA-1 is not a key


def test_twilio_auth_token_needs_an_account_sid_nearby() -> None:
    token = FK.chars(HEX, 32)
    assert found(f'SID = "{FK.twilio_sid()}"\nAUTH = "{token}"\n', "sms.py") == {"twilio-api-key"}
    assert found(f'CHECKSUM = "{token}"\n', "sms.py") == set()


# --- checksums and structure ---------------------------------------------------


def test_github_and_npm_checksums() -> None:
    random_part = FK.mixed(ALNUM, 30)
    good = random_part + crc32_base62(random_part)
    assert has_crc32_suffix("ghp_", good) and has_crc32_suffix("npm_", good)
    bad = random_part + ("A" if good[-1] != "A" else "B") * 6
    assert not has_crc32_suffix("ghp_", bad)
    # A right-shaped token with a wrong checksum is not reported (e.g. hand-made doc values).
    assert found(f'X = "ghp_{bad}"\n', "a.py") == set()
    assert found(f'X = "npm_{bad}"\n', "a.py") == set()


def test_pypi_token_must_be_a_pypi_macaroon() -> None:
    token = FK.pypi()
    assert is_pypi_macaroon(token.removeprefix("pypi-"))
    # Right prefix and length, but no signature field at the end: not a macaroon.
    raw = base64.urlsafe_b64decode(token.removeprefix("pypi-") + "==")
    forged = raw[:-34] + b"\x07\x20" + raw[-32:]
    forged_token = "pypi-" + base64.urlsafe_b64encode(forged).decode().rstrip("=")
    assert not is_pypi_macaroon(forged_token.removeprefix("pypi-"))
    assert found(f'X = "{forged_token}"\n', "a.py") == set()
    assert found(f'X = "{token}"\n', "a.py") == {"pypi-token"}


def test_placeholder_token_filter() -> None:
    assert is_placeholder_token("x" * 36) and is_placeholder_token("0123456789abcdef0123456789abcdef")
    assert is_placeholder_token("YOUR_TOKEN_HERE_1234") and is_placeholder_token("<token>")
    assert not is_placeholder_token(FK.mixed(ALNUM, 36))
    # Real-looking random letters that happen to contain a word are not placeholders.
    assert not is_placeholder_token("qWzdbyouRzRcFIEZmIlePlSlqZPkTnvbhe")


# --- name-rule and default-credential false positives ----------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        'public_key = "{rand}"',
        'publicKey: "{rand}"',
        'csrf-token = "{rand}"',
        'xsrf_token = "{rand}"',
        'key_down_event = "{rand}"',
        'cache_key = "{rand}"',
        'KEY = "{hex}"',
        'URI = "postgresql+asyncpg://postgres:airflow@postgres/airflow"',
        'BROKER = "amqp://guest:guest@rabbitmq:5672/"',
        'DOC = "my-conn-type://my-login:my-pa%2Fssword@my-host:5432/my-schema"',
        'Connection(conn_id="local_mysql", login="airflow", password="airflow", schema="airflow")',
    ],
)
def test_name_rule_decoys_are_not_findings(snippet: str) -> None:
    text = snippet.format(rand=FK.random_key(40), hex=FK.hex40()) + "\n"
    for path in ("a.py", "a.txt", "values.yaml"):
        if path != "a.py" and snippet.startswith("Connection("):
            continue
        assert found(text, path) == set(), (snippet, path)


def test_secret_names_still_fire_with_random_values() -> None:
    assert found(f'signing_key = "{FK.random_key(40)}"\n', "a.py") == {"high-entropy-secret"}
    assert found(f'fernet_key_v2 = "{FK.random_key(44)}"\n', "a.py") == {"high-entropy-secret"}
    assert found(f'aes_key_hex = "{FK.chars(HEX, 64)}"\n', "a.py") == {"high-entropy-secret"}
    pw = FK.password()
    assert found(f'Connection(conn_id="w", login="etl", password="{pw}")\n', "a.py") == {"airflow-connection-password"}
    assert found(f'URL = "postgresql://etl:{pw.replace("#", "8").replace("%", "9").replace("?", "7")}@db/wh"\n', "a.py") == {
        "connection-uri-credentials"
    }


def test_translation_catalogs_only_get_format_rules(tmp_path) -> None:
    text = '{"password": "Wachtwoord", "token": "Toegangstoken123"}\n'
    assert found(text, "ui/dist/i18n/locales/nl/admin.json") == set()
    assert found(text, "config/admin.json") != set()
    hf = FK.huggingface()
    assert found(f'{{"token": "{hf}"}}\n', "ui/locales/nl/admin.json") == {"huggingface-token"}
