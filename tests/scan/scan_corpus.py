"""Labeled corpus of planted fake credentials, shared by the tests and the benchmark.

Every credential is generated at run time from a seeded RNG in its real format
(right prefix, length, alphabet; JWTs with a decodable header), so no credential
is ever committed in this file and the scanner can run over this repository
without flagging its own tests. Each planted value is recorded with the file,
line and rule the scanner must report. Decoys (placeholders, templates, env
lookups, secret references) sit next to them and must not be reported.
"""

from __future__ import annotations

import base64
import json
import random
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path

B32 = string.ascii_uppercase + "234567"
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
URLSAFE = ALNUM + "_-"
_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def crc32_base62(text: str) -> str:
    """GitHub/npm token checksum: CRC32 of the random part, base62, 6 digits."""
    number, digits = zlib.crc32(text.encode()), []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_B62[rest])
    return "".join(reversed(digits)).rjust(6, "0")


@dataclass(frozen=True)
class Planted:
    """One planted credential: where it is, which rule must find it, and its value."""

    path: str
    line: int
    rule_id: str
    value: str
    kind: str


@dataclass
class _File:
    path: str
    lines: list[str] = field(default_factory=list)
    labels: list[tuple[int, str, str, str]] = field(default_factory=list)

    def add(
        self, text: str, rule_id: str | None = None, value: str = "", kind: str = "", at: int | None = None
    ) -> None:
        parts = text.split("\n")
        self.lines.extend(parts)
        if rule_id is not None:
            # The label points at the line holding the value (or ``at`` lines into ``text``).
            offset = at if at is not None else next((i for i, part in enumerate(parts) if value[:12] in part), 0)
            first = parts
            self.labels.append((len(self.lines) - len(first) + offset + 1, rule_id, value, kind or rule_id))


class Fakes:
    """Format-valid fake credentials from one seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def mixed(self, alphabet: str, n: int) -> str:
        while True:
            value = self.chars(alphabet, n)
            if any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value):
                return value

    def aws_key_id(self) -> str:
        return self.rng.choice(["AKIA", "ASIA"]) + self.chars(B32, 16)

    def aws_secret(self) -> str:
        return self.mixed(ALNUM + "+/", 40)

    def github(self) -> str:
        random_part = self.mixed(ALNUM, 30)
        return self.rng.choice(["ghp_", "gho_", "ghs_", "ghu_", "ghr_"]) + random_part + crc32_base62(random_part)

    def github_fine_grained(self) -> str:
        return f"github_pat_{self.mixed(ALNUM, 22)}_{self.mixed(ALNUM, 59)}"

    def gitlab(self) -> str:
        return "glpat-" + self.mixed(ALNUM, 20)

    def gitlab_any(self) -> str:
        """One of GitLab's token kinds, in the classic or the newer routable format."""
        kind = self.rng.choice(["glpat", "gldt", "glrt", "glcbt", "glft", "glimt", "gloas", "glagent", "glffct", "glsoat"])
        if self.rng.random() < 0.5:
            return f"{kind}-{self.mixed(URLSAFE, 20)}"
        return f"{kind}-{self.mixed(ALNUM, 27)}.01.{self.chars(string.digits + string.ascii_lowercase, 9)}"

    def openai(self) -> str:
        kind = self.rng.choice(["proj", "svcacct", "admin"])
        return f"sk-{kind}-{self.mixed(URLSAFE, 58)}T3BlbkFJ{self.mixed(URLSAFE, 58)}"

    def openai_legacy(self) -> str:
        return f"sk-{self.mixed(ALNUM, 20)}T3BlbkFJ{self.mixed(ALNUM, 20)}"

    def anthropic(self) -> str:
        return f"sk-ant-api03-{self.mixed(URLSAFE, 93)}AA"

    def huggingface(self) -> str:
        return "hf_" + self._letters(34)

    def _letters(self, n: int) -> str:
        while True:
            value = self.chars(string.ascii_letters, n)
            if any(c.islower() for c in value) and any(c.isupper() for c in value):
                return value

    def wandb(self) -> str:
        return f"wandb_v1_{self.mixed(ALNUM, 27)}_{self.mixed(ALNUM, 50)}"

    def wandb_legacy(self) -> str:
        return self.chars(HEX, 40)

    def stripe(self) -> str:
        return self.rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + self.mixed(ALNUM, 99)

    def stripe_webhook(self) -> str:
        return "whsec_" + self.mixed(ALNUM, 32)

    def azure_client_secret(self) -> str:
        alphabet = ALNUM + "_~.-"
        return f"{self.mixed(ALNUM, 3)}{self.rng.randint(0, 9)}Q~{self.mixed(alphabet, 34)}"

    def gcp_api_key(self) -> str:
        return "AIza" + self.mixed(URLSAFE, 35)

    def databricks(self) -> str:
        return "dapi" + self.chars(HEX, 32)

    def twilio_api_key(self) -> str:
        return "SK" + self.chars(HEX, 32)

    def twilio_sid(self) -> str:
        return "AC" + self.chars(HEX, 32)

    def sendgrid(self) -> str:
        return f"SG.{self.mixed(URLSAFE, 22)}.{self.mixed(URLSAFE, 43)}"

    def npm(self) -> str:
        random_part = self.mixed(ALNUM, 30)
        return "npm_" + random_part + crc32_base62(random_part)

    def pypi(self) -> str:
        """pypi- + a macaroon v2: version, location pypi.org, identifier, EOS x2, signature."""
        raw = (
            b"\x02\x01\x08pypi.org\x02\x20" + self.rng.randbytes(32) + b"\x00"
            + b"\x02\x40" + json.dumps({"version": 1, "permissions": "user"}).encode()[:64].ljust(64)
            + b"\x00\x00\x06\x20" + self.rng.randbytes(32)
        )
        return "pypi-" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def notion(self) -> str:
        if self.rng.random() < 0.5:
            return "secret_" + self.mixed(ALNUM, 43)
        return "ntn_" + self.chars(string.digits, 11) + self.mixed(ALNUM, 35)

    def replicate(self) -> str:
        return "r8_" + self.mixed(ALNUM, 37)

    def groq(self) -> str:
        return "gsk_" + self.mixed(ALNUM, 52)

    def langsmith(self) -> str:
        return f"lsv2_{self.rng.choice(['pt', 'sk'])}_{self.chars(HEX, 32)}_{self.chars(HEX, 10)}"

    def slack_config(self) -> str:
        return f"xoxe.xoxp-1-{self.mixed(ALNUM, 160)}"

    def slack_legacy(self) -> str:
        digits = string.digits
        return f"xoxp-{self.chars(digits, 10)}-{self.chars(digits, 10)}-{self.chars(digits, 12)}-{self.chars(HEX, 32)}"

    def unsigned_jwt(self) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = b64(json.dumps({"sub": self.chars(string.digits, 10), "role": "admin"}).encode())
        return f"{header}.{payload}."

    def gcp_service_account_json(self) -> dict[str, str]:
        body = "".join(self.chars(ALNUM + "+/", 64) + "\n" for _ in range(8))
        return {
            "type": "service_account",
            "project_id": f"ml-{self.chars(string.ascii_lowercase, 6)}",
            "private_key_id": self.hex40(),
            "private_key": f"-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n",
            "client_email": "trainer@example-project.iam.gserviceaccount.com",
        }

    def slack(self) -> str:
        return f"xoxb-{self.chars(string.digits, 11)}-{self.chars(string.digits, 12)}-{self.mixed(ALNUM, 24)}"

    def slack_webhook(self) -> str:
        return (
            f"https://hooks.slack.com/services/T{self.chars(B32[:26], 8)}/B{self.chars(B32[:26], 8)}/"
            f"{self.mixed(ALNUM, 24)}"
        )

    def jwt(self) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps({"sub": self.chars(string.digits, 10), "iat": 1700000000}).encode())
        return f"{header}.{payload}.{b64(self.rng.randbytes(32))}"

    def password(self) -> str:
        return self.mixed(ALNUM, 10) + self.rng.choice("!#%&*+-=?^") + self.chars(string.digits, 2)

    def random_key(self, n: int = 40) -> str:
        return self.mixed(ALNUM, n)

    def hex40(self) -> str:
        return self.chars("0123456789abcdef", 40)

    def private_key_lines(self) -> list[str]:
        body = [self.chars(ALNUM + "+/", 64) for _ in range(12)]
        return ["-----BEGIN RSA PRIVATE KEY-----", *body, "-----END RSA PRIVATE KEY-----"]


def _dag(fk: Fakes, name: str) -> _File:
    f = _File(f"dags/{name}.py")
    f.add('"""ETL DAG: loads the warehouse (planted credentials for scanner tests)."""')
    f.add("import os\n\nimport pendulum\nfrom sqlalchemy import create_engine\n")
    f.add("from airflow.models import Connection, Variable\nfrom airflow.sdk import BaseHook, dag, task\n")
    key_id, secret = fk.aws_key_id(), fk.aws_secret()
    f.add(f'AWS_ACCESS_KEY_ID = "{key_id}"', "aws-access-key-id", key_id)
    f.add(f'AWS_SECRET_ACCESS_KEY = "{secret}"', "aws-secret-access-key", secret)
    pw = fk.password()
    f.add(f'db_password = "{pw}"', "secret-assignment", pw)
    sk = fk.random_key(44)
    f.add(f'SIGNING_KEY = "{sk}"', "high-entropy-secret", sk)
    f.add("")
    f.add("# decoys: none of these is a credential")
    f.add('token = os.environ["API_TOKEN"]\napi_key = Variable.get("partner_api_key")')
    f.add('password_env = "WAREHOUSE_PASSWORD"\nsecret_name = "prod/connections/warehouse"')
    f.add('template_password = "{{ conn.warehouse.password }}"\nDEFAULT_CONN_ID = "postgres_default"')
    f.add("")
    cpw = fk.password()
    f.add("warehouse = Connection(\n    conn_id=\"warehouse\",\n    conn_type=\"postgres\",\n    login=\"etl\",")
    f.add(f'    password="{cpw}",', "airflow-connection-password", cpw)
    f.add(")")
    upw = fk.password().replace("%", "9").replace("#", "8").replace("?", "7")
    f.add(
        f'lake = Connection(conn_id="lake", uri="postgresql://lake:{upw}@lake.internal:5432/lake")',
        "airflow-connection-password",
        upw,
    )
    vv = fk.random_key(24)
    f.add(f'Variable.set("partner_api_token", "{vv}")', "airflow-variable-secret", vv)
    epw = fk.password().replace("%", "9").replace("#", "8").replace("?", "7")
    f.add(
        f'os.environ["AIRFLOW_CONN_REPORTING"] = "mysql://report:{epw}@reporting.internal:3306/r"',
        "airflow-conn-env-literal",
        epw,
    )
    gpw = fk.password().replace("%", "9").replace("#", "8").replace("?", "7")
    f.add(f'engine = create_engine("postgresql+psycopg://svc:{gpw}@db.internal/warehouse")', "connection-uri-credentials", gpw)
    gh = fk.github()
    f.add(f'HEADERS = {{"Authorization": "token {gh}"}}', "github-token", gh)
    f.add("")
    f.add('@dag(schedule="@daily", start_date=pendulum.datetime(2024, 1, 1), catchup=False)')
    f.add(f"def {name}():")
    f.add("    @task\n    def extract() -> int:")
    f.add('        conn = BaseHook.get_connection("warehouse")\n        return len(conn.password or "")')
    f.add("    extract()\n")
    f.add(f"{name}()")
    return f


def _pipeline(fk: Fakes, name: str) -> _File:
    f = _File(f"pipelines/{name}.py")
    f.add('"""KFP v2 training pipeline (planted credentials for scanner tests)."""')
    f.add("from kfp import dsl, kubernetes\nfrom kfp.client import Client\n")
    dv = fk.random_key(32)
    f.add("@dsl.component(base_image=\"python:3.11\")")
    f.add(f'def train(epochs: int = 3, api_key: str = "{dv}") -> str:', "kfp-component-default-secret", dv)
    f.add('    return f"trained {epochs}"\n')
    f.add("@dsl.component\ndef evaluate(db_password: str, threshold: float = 0.5) -> float:\n    return threshold\n")
    f.add('@dsl.pipeline(name="train-pipeline")\ndef train_pipeline(lr: float = 0.01):')
    f.add("    task = train(epochs=5)")
    hf = fk.random_key(34)
    f.add(f'    task.set_env_variable(name="HF_TOKEN", value="{hf}")', "kfp-env-literal-secret", hf)
    f.add('    task.set_env_variable(name="LOG_LEVEL", value="debug")')
    f.add(
        '    kubernetes.use_secret_as_env(task, secret_name="db-creds", secret_key_to_env={"password": "DB_PASSWORD"})'
    )
    ap = fk.password()
    f.add(f'    evaluate(db_password="{ap}")', "kfp-pipeline-arg-secret", ap)
    f.add("")
    f.add('if __name__ == "__main__":')
    wk = fk.random_key(40)
    f.add("    Client().create_run_from_pipeline_func(")
    f.add(f'        train_pipeline, arguments={{"lr": 0.1, "wandb_api_key": "{wk}"}}', "kfp-pipeline-arg-secret", wk)
    f.add("    )")
    return f


def _notebook(fk: Fakes, name: str) -> _File:
    f = _File(f"notebooks/{name}.py")
    f.add("# ---\n# jupyter:\n#   jupytext:\n#     formats: ipynb,py:percent\n# ---\n")
    f.add("# %%\n!pip install requests\n\n# %%\nimport requests\n")
    jwt = fk.jwt()
    f.add(f'resp = requests.get("https://api.internal/v1/items", headers={{"Authorization": "Bearer {jwt}"}})', "jwt", jwt)
    ok = fk.random_key(48)
    f.add(f'openai_api_key = "{ok}"', "high-entropy-secret", ok)
    gl = fk.gitlab()
    f.add(f'GITLAB = "{gl}"', "gitlab-token", gl)
    wh = fk.slack_webhook()
    f.add(f'requests.post("{wh}", json={{"text": "done"}})', "slack-token", wh)
    f.add("# %%\nprint(resp.status_code)")
    return f


def _yaml(fk: Fakes, name: str) -> _File:
    f = _File(f"config/{name}.yaml")
    f.add("# deployment values (planted credentials for scanner tests)\nwarehouse:\n  host: db.internal\n  user: etl")
    pw = fk.password().replace("#", "8")
    f.add(f"  password: {pw}", "secret-assignment", pw)
    f.add('  password_secret_ref: "warehouse-credentials"\n  token_url: https://auth.internal/token')
    gl = fk.gitlab()
    f.add(f"gitlab:\n  token: {gl}", "gitlab-token", gl)
    f.add("env:\n  - name: LOG_LEVEL\n    value: info\n  - name: MLFLOW_TRACKING_TOKEN")
    mt = fk.random_key(32)
    f.add(f'    value: "{mt}"', "high-entropy-secret", mt)
    f.add('  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef: {name: db, key: password}')
    cpw = fk.password().replace("%", "9").replace("#", "8").replace("?", "7")
    f.add(f"airflow_env:\n  AIRFLOW_CONN_WAREHOUSE: postgres://etl:{cpw}@db.internal:5432/wh", "airflow-conn-env-literal", cpw)
    f.add("  AIRFLOW_CONN_METRICS: '{{ vault_metrics_uri }}'")
    key = fk.private_key_lines()
    f.add("ssh:\n  private_key: |")
    f.add("\n".join("    " + line for line in key), "private-key", key[1], at=0)
    return f


def _gcp_json(fk: Fakes, name: str) -> _File:
    f = _File(f"keys/{name}.json")
    key = fk.private_key_lines()
    key_id = fk.hex40()
    pem = "\\n".join(key) + "\\n"
    f.add('{\n  "type": "service_account",\n  "project_id": "ml-platform-123",')
    f.add(f'  "private_key_id": "{key_id}",', "gcp-service-account", key_id)
    f.add(f'  "private_key": "{pem}",', "private-key", key[1])
    f.add('  "client_email": "trainer@ml-platform-123.iam.gserviceaccount.com",\n  "client_id": "1234567890"\n}')
    return f


def _dotenv(fk: Fakes, directory: str) -> _File:
    f = _File(f"{directory}/.env")
    f.add("# local settings", "dotenv-file", "", "dotenv-file")
    sl = fk.slack()
    f.add(f"SLACK_BOT_TOKEN={sl}", "slack-token", sl)
    pw = fk.password().replace("#", "8")
    f.add(f"DB_PASSWORD={pw}", "secret-assignment", pw)
    f.add("DB_HOST=localhost\nAPI_TOKEN=${VAULT_API_TOKEN}")
    return f


def _dotenv_template(fk: Fakes, directory: str) -> _File:
    f = _File(f"{directory}/.env.example")
    f.add("# copy to .env and fill in\nDB_PASSWORD=changeme\nSLACK_BOT_TOKEN=<your-slack-token>\nDB_HOST=localhost")
    tok = fk.random_key(32)
    f.add(f"PARTNER_API_TOKEN={tok}", "dotenv-template-value", tok)
    return f


def _ml_clients(fk: Fakes, name: str) -> _File:
    """Model-API, hub and tracker keys where only the value gives them away."""
    f = _File(f"ml/{name}.py")
    f.add('"""Training job clients (planted credentials for scanner tests)."""')
    f.add("import json\n\nimport requests\nfrom airflow.models import Connection\n")
    hf = fk.huggingface()
    f.add(f'HUB_HEADERS = {{"Authorization": "Bearer {hf}"}}', "huggingface-token", hf)
    oa = fk.openai()
    f.add(f'client = OpenAI(api_key="{oa}")', "openai-api-key", oa)
    an = fk.anthropic()
    f.add(f'CLAUDE = "{an}"', "anthropic-api-key", an)
    wb = fk.wandb()
    f.add(f'wandb.login(key="{wb}")', "wandb-api-key", wb)
    lw = fk.wandb_legacy()
    f.add(f'wandb.login(anonymous="never", key="{lw}")', "wandb-api-key", lw)
    for method, rule in (
        ("stripe", "stripe-secret-key"), ("azure_client_secret", "azure-ad-client-secret"),
        ("gcp_api_key", "gcp-api-key"), ("databricks", "databricks-token"), ("twilio_api_key", "twilio-api-key"),
        ("sendgrid", "sendgrid-api-key"), ("npm", "npm-token"), ("pypi", "pypi-token"), ("notion", "notion-token"),
        ("replicate", "replicate-token"), ("groq", "groq-api-key"), ("langsmith", "langsmith-api-key"),
        ("github_fine_grained", "github-token"), ("gitlab_any", "gitlab-token"), ("slack_config", "slack-token"),
        ("unsigned_jwt", "jwt"),
    ):
        value = getattr(fk, method)()
        f.add(f'SETTINGS["{method}"] = "{value}"', rule, value)
    sid, auth = fk.twilio_sid(), fk.chars(HEX, 32)
    f.add(f'TWILIO = ("{sid}",\n          "{auth}")', "twilio-api-key", auth, at=1)
    sa = fk.gcp_service_account_json()
    escaped = json.dumps(json.dumps({"keyfile_dict": json.dumps(sa)}))[1:-1]  # JSON inside JSON inside Python
    f.add(f'gcp = Connection(conn_id="gcp", conn_type="google_cloud_platform", extra="{escaped}")',
          "gcp-service-account", sa["private_key_id"])
    f.add("")
    f.add("# decoys: the right shape, but placeholders, hashes, public values")
    f.add('HF_EXAMPLE = "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\nAWS_EXAMPLE = "AKIAXXXXXXXXXXXXXXXX"')
    f.add('GH_EXAMPLE = "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\nSLACK_EXAMPLE = "xoxb-xxxxxxxxxxx-xxxxxxxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx"')
    f.add(f'public_key = "{fk.random_key(44)}"\nkey_down_event = "{fk.random_key(24)}"')
    f.add(f'csrf_token = "{fk.random_key(40)}"\nCOMMIT = "{fk.hex40()}"')
    f.add(f'STRIPE_PUBLISHABLE = "pk_live_{fk.mixed(ALNUM, 99)}"')
    return f


GENERATORS = (_dag, _pipeline, _notebook, _yaml, _gcp_json, _ml_clients)


def generate_corpus(root: Path, *, seed: int = 1234, copies: int = 2) -> list[Planted]:
    """Write the corpus under ``root``; return every planted credential's label."""
    fk = Fakes(seed)
    files: list[_File] = []
    for i in range(copies):
        for gen in GENERATORS:
            files.append(gen(fk, f"{gen.__name__.strip('_')}_{i}"))
        files.append(_dotenv(fk, f"svc{i}"))
        files.append(_dotenv_template(fk, f"svc{i}"))
    labels: list[Planted] = []
    for f in files:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(f.lines) + "\n", encoding="utf-8")
        labels.extend(Planted(f.path, line, rule, value, kind) for line, rule, value, kind in f.labels)
    return labels


def plant_values(labels: list[Planted]) -> list[str]:
    """Every distinct non-empty planted value (for leak checks on outputs)."""
    return sorted({p.value for p in labels if p.value})
