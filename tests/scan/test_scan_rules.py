"""Detector behaviour on small snippets, and redaction as a property."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scan_corpus import Fakes

from runlease.scan import scan_text
from runlease.scan.names import is_secret_name
from runlease.scan.values import is_placeholder

FK = Fakes(11)


def rules(text: str, path: str = "dag.py") -> list[tuple[int, str]]:
    return [(f.line, f.rule_id) for f in scan_text(text, path) if not f.suppressed_by]


@pytest.mark.parametrize(
    "snippet",
    [
        'password = os.environ["DB_PASSWORD"]',
        'password = "{{ conn.warehouse.password }}"',
        'token = Variable.get("api_token")',
        'secret_name = "prod/connections/warehouse"',
        'password_env = "WAREHOUSE_PASSWORD"',
        'token_type = "bearer"',
        'PASSWORD_FIELD = "password"',
        'help_text = "The password used to log in"',
        'conn = Connection(conn_id="x", password="{{ var.value.pw }}")',
        'engine = create_engine(f"postgresql://{user}:{password}@{host}/db")',
        'URI = "postgresql://user:password@localhost/db"',
        'KEY_HEADER = "-----BEGIN RSA PRIVATE KEY-----"',
        'if pem.startswith("-----BEGIN PRIVATE KEY-----"):\n    pass',
        'task.set_env_variable(name="LOG_LEVEL", value="debug")',
        'kubernetes.use_secret_as_env(t, secret_name="s", secret_key_to_env={"password": "DB_PASSWORD"})',
        'Variable.set("batch_size", "500")',
        'os.environ["AIRFLOW_CONN_HTTP"] = "http://example.com"',
        'primary_key = "id"',
        'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
    ],
)
def test_decoys_are_not_findings(snippet: str) -> None:
    assert rules(snippet) == []


def test_airflow_and_kfp_rules_from_the_ast() -> None:
    pw, tok = FK.password(), FK.random_key(30)
    src = (
        "from airflow.models import Connection, Variable\n"
        "from kfp import dsl\n"
        f'c = Connection(\n    conn_id="x",\n    password="{pw}",\n)\n'
        f'Variable.set(key="slack_token", value="{tok}")\n'
        "@dsl.pipeline\n"
        "def p():\n"
        f'    t = step().set_env_variable("API_KEY", "{tok}")\n'
    )
    assert rules(src) == [(5, "airflow-connection-password"), (7, "airflow-variable-secret"), (10, "kfp-env-literal-secret")]


def test_multiline_literal_is_redacted_to_end_of_line() -> None:
    tok = FK.random_key(40)
    src = f'api_token = ("{tok[:20]}"\n    "{tok[20:]}")\n'  # implicit concatenation over two lines
    (finding,) = scan_text(src, "a.py")
    assert finding.rule_id == "high-entropy-secret"
    assert tok[:20] not in finding.excerpt


def test_notebook_magics_do_not_stop_the_ast() -> None:
    pw = FK.password()
    src = f'%pip install apache-airflow\n!ls\nfrom airflow.models import Connection\nConnection(password="{pw}")\n'
    assert rules(src, "nb.py") == [(4, "airflow-connection-password")]


def test_ipynb_json_escaped_assignment() -> None:
    pw = FK.password()
    src = '{"cells": [{"source": [\n"db_password = \\"' + pw + '\\"\\n"\n]}]}\n'
    findings = scan_text(src, "explore.ipynb")
    assert [(f.line, f.rule_id) for f in findings] == [(2, "secret-assignment")]
    assert pw not in findings[0].excerpt


def test_unknown_pragma_rule_does_not_suppress() -> None:
    src = f'password = "{FK.password()}"  # runlease: allow everything\n'
    assert rules(src) == [(1, "secret-assignment")]


def test_pragma_on_comment_line_above() -> None:
    src = f'# runlease: allow secret-assignment\npassword = "{FK.password()}"\n'
    assert rules(src) == []


def test_names_and_values() -> None:
    assert is_secret_name("db_password") and is_secret_name("apiKey") and is_secret_name("HF_TOKEN")
    assert not is_secret_name("password_env") and not is_secret_name("secret_name") and not is_secret_name("use_token")
    assert not is_secret_name("SECRET_STATE_INFO")  # an HKDF info label names a key's purpose, not a key
    assert is_placeholder("${DB_PASSWORD}") and is_placeholder("<your-token>") and is_placeholder("changeme")
    assert not is_placeholder(FK.password())


_SECRET_ALPHABET = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'\\<>{}$%#`")


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(_SECRET_ALPHABET, min_size=8, max_size=60),
    name=st.sampled_from(["password", "api_token", "client_secret", "DB_PASSWORD", "signing_key"]),
    template=st.sampled_from(
        [
            '{name} = "{value}"\n',
            'cfg = {{"{name}": "{value}"}}\n',
            'connect(host="h", {name}="{value}")\n',
            '{name}: "{value}"\n',
            "{name}={value}\n",
        ]
    ),
    path=st.sampled_from(["a.py", "values.yaml", ".env.example", "settings.ini"]),
)
def test_excerpts_and_fingerprints_never_contain_the_value(value: str, name: str, template: str, path: str) -> None:
    text = template.format(name=name, value=value)
    # A value that also stands in the line around it (e.g. the key name itself) may show there.
    assume(value not in template.format(name=name, value="«redacted»"))
    for finding in scan_text(text, path):
        # The fields that carry text from the file; a value may well equal a field *name*
        # ("suppress" in "suppressed_by"), which says nothing about a leak.
        for field in ("excerpt", "fingerprint"):
            assert value not in str(getattr(finding, field))
        assert "«redacted:" in finding.excerpt


def test_scanner_never_imports_airflow_or_kfp() -> None:
    import subprocess
    import sys

    from scan_support import REPO_ROOT

    code = (
        "import sys\n"
        "from runlease.scan import scan_text\n"
        "import runlease.scan.cli\n"
        "scan_text('from airflow.models import Connection\\nfrom kfp import dsl\\n"
        "Connection(password=\"Zx9kP2mQ!7ab\")\\n', 'dag.py')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'kfp'))\n"
        "assert not loaded, loaded\n"
    )
    env_path = str(REPO_ROOT / "src")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": ""}
    )
    assert proc.returncode == 0, proc.stderr
