"""The scanner's rule catalogue: one id, one severity and one explanation per rule.

Every finding names a rule from this table, and the table is the single source
for the rich table's legend, the SARIF ``tool.driver.rules`` metadata and the
docs, so a rule id means the same thing in every output.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Severity(str, Enum):
    """How bad a finding is; maps one-to-one onto SARIF result levels."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Rule:
    """One detection rule.

    ``priority`` resolves overlaps: when two rules flag the same value on the
    same line, only the more specific one (lower number) is reported, so a
    GitHub token assigned to ``token = ...`` is reported once, as a GitHub token.
    """

    id: str
    title: str
    severity: Severity
    explanation: str
    priority: int
    tags: tuple[str, ...] = ()


_RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        "Private key block",
        Severity.ERROR,
        "A PEM/OpenSSH/PGP private key with its body is committed. Anyone with read "
        "access to the repository can impersonate the key's owner; revoke the key.",
        10,
        ("format",),
    ),
    Rule(
        "aws-access-key-id",
        "AWS access key id",
        Severity.WARNING,
        "An AWS access key id (AKIA.../ASIA...). The id alone is not a credential, but it "
        "is almost always committed together with its secret; rotate the key pair.",
        10,
        ("format", "aws"),
    ),
    Rule(
        "aws-secret-access-key",
        "AWS secret access key",
        Severity.ERROR,
        "A 40-character AWS secret access key next to an access key id or assigned to an "
        "aws_secret_access_key name. Together they sign any API call the key allows.",
        10,
        ("format", "aws"),
    ),
    Rule(
        "github-token",
        "GitHub token",
        Severity.ERROR,
        "A GitHub personal access, OAuth, app or fine-grained token (ghp_/gho_/ghu_/ghs_/"
        "ghr_ with a valid CRC32 checksum, github_pat_). Revoke it in GitHub settings.",
        10,
        ("format",),
    ),
    Rule(
        "gitlab-token",
        "GitLab token",
        Severity.ERROR,
        "A GitLab personal, project, deploy, runner, CI job, feed, incoming-mail, SCIM, OAuth "
        "application, agent or feature-flag token (glpat-, gldt-, glrt-, glcbt-, gloas-, ...) or a "
        "runner registration token (GR1348941...).",
        10,
        ("format",),
    ),
    Rule(
        "slack-token",
        "Slack token or webhook",
        Severity.ERROR,
        "A Slack bot/user/app/legacy token (xox?-), configuration or refresh token (xoxe.xoxp-, "
        "xoxe-) or a webhook URL (services, workflows, triggers); all act as your workspace.",
        10,
        ("format",),
    ),
    Rule(
        "jwt",
        "JSON Web Token",
        Severity.WARNING,
        "A JWT (header.payload.signature), signed or unsigned (alg none). Bearer tokens "
        "grant access until they expire; many in the wild never do.",
        20,
        ("format",),
    ),
    Rule(
        "gcp-service-account",
        "GCP service-account key",
        Severity.ERROR,
        "A Google Cloud service-account JSON key (type service_account with a private key "
        "id). Delete the key in IAM and use workload identity or a secret manager.",
        5,
        ("format", "gcp"),
    ),
    Rule(
        "openai-api-key",
        "OpenAI API key",
        Severity.ERROR,
        'An OpenAI project, service-account, admin or legacy API key (sk-proj-, sk-svcacct-, sk-admin-, sk-...T3BlbkFJ...). It bills model usage to your organisation; revoke it in the OpenAI dashboard.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "anthropic-api-key",
        "Anthropic API key",
        Severity.ERROR,
        'An Anthropic API or admin key (sk-ant-api..., sk-ant-admin...). Revoke it in the Anthropic console.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "huggingface-token",
        "Hugging Face token",
        Severity.ERROR,
        'A Hugging Face user or organisation access token (hf_..., api_org_...); it can read private models and datasets and, with write scope, push to them.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "wandb-api-key",
        "Weights & Biases API key",
        Severity.ERROR,
        'A W&B API key: the current wandb_v1_ format anywhere, or a legacy 40-hex key on a line that mentions wandb. It reads and writes every project of its user.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "stripe-secret-key",
        "Stripe secret key",
        Severity.ERROR,
        'A Stripe secret or restricted key (sk_live_/sk_test_/rk_live_/rk_test_) or webhook signing secret (whsec_). Publishable keys (pk_) are public and not reported.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "azure-ad-client-secret",
        "Azure AD (Entra ID) client secret",
        Severity.ERROR,
        "An Entra ID application client secret (xxx8Q~...). With the app's client id it obtains tokens for everything the app may access.",
        10,
        ("format", "vendor"),
    ),
    Rule(
        "gcp-api-key",
        "Google Cloud API key",
        Severity.ERROR,
        'A Google API key (AIza...). Restrict or delete it in the Cloud console; unrestricted keys bill any enabled API.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "databricks-token",
        "Databricks personal access token",
        Severity.ERROR,
        'A Databricks personal access token (dapi + 32 hex). It acts as its user in the workspace: notebooks, jobs, warehouses, secrets.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "twilio-api-key",
        "Twilio API key or auth token",
        Severity.ERROR,
        'A Twilio API key SID (SK + 32 hex), or a 32-hex auth token next to an account SID (AC...).',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "sendgrid-api-key",
        "SendGrid API key",
        Severity.ERROR,
        'A SendGrid API key (SG.xxx.yyy); it sends mail as your domain.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "npm-token",
        "npm access token",
        Severity.ERROR,
        'An npm access token (npm_ with a valid CRC32 checksum); it can publish packages as its owner.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "pypi-token",
        "PyPI API token",
        Severity.ERROR,
        'A PyPI or TestPyPI API token (pypi- + a macaroon for pypi.org); it can upload releases of its projects.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "notion-token",
        "Notion integration token",
        Severity.ERROR,
        'A Notion internal integration token (secret_... or ntn_...).',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "replicate-token",
        "Replicate API token",
        Severity.ERROR,
        'A Replicate API token (r8_...); it runs models billed to its owner.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "groq-api-key",
        "Groq API key",
        Severity.ERROR,
        'A Groq API key (gsk_...).',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "langsmith-api-key",
        "LangSmith API key",
        Severity.ERROR,
        'A LangSmith personal or service key (lsv2_pt_/lsv2_sk_...); it reads traces, which often hold prompts and data.',
        10,
        ("format", "vendor"),
    ),
    Rule(
        "airflow-connection-password",
        "Airflow Connection with a literal password",
        Severity.ERROR,
        "Connection(...) built with a literal password=, or a uri= with an inline password. "
        "Store the connection in a secrets backend and refer to it by conn_id.",
        30,
        ("airflow",),
    ),
    Rule(
        "airflow-variable-secret",
        "Airflow Variable.set of a secret literal",
        Severity.ERROR,
        "Variable.set() writes a literal into a secret-looking Variable from DAG code, so "
        "the value lives in git. Put it in the secrets backend instead.",
        30,
        ("airflow",),
    ),
    Rule(
        "airflow-conn-env-literal",
        "AIRFLOW_CONN_* set to a literal with credentials",
        Severity.ERROR,
        "An AIRFLOW_CONN_<ID> environment value with inline credentials is written in code "
        "or config. Inject it from the secret manager at deploy time.",
        30,
        ("airflow",),
    ),
    Rule(
        "connection-uri-credentials",
        "Connection URI with an inline password",
        Severity.ERROR,
        "A URI of the form scheme://user:password@host with a literal password (database "
        "DSNs, broker URLs, SQLAlchemy engines).",
        40,
        ("uri",),
    ),
    Rule(
        "kfp-env-literal-secret",
        "KFP set_env_variable with a secret literal",
        Severity.ERROR,
        "task.set_env_variable() puts a literal into a secret-looking environment variable; "
        "the value is compiled into the pipeline spec. Use kubernetes.use_secret_as_env.",
        30,
        ("kfp",),
    ),
    Rule(
        "kfp-component-default-secret",
        "KFP component/pipeline parameter with a secret default",
        Severity.ERROR,
        "A component or pipeline parameter with a secret-looking name defaults to a literal; "
        "defaults are compiled into the pipeline YAML and shown in the UI.",
        30,
        ("kfp",),
    ),
    Rule(
        "kfp-pipeline-arg-secret",
        "KFP pipeline argument passes a secret literal",
        Severity.ERROR,
        "A literal is passed to a secret-named parameter of a component or pipeline run; "
        "arguments are recorded in the run's metadata in clear text.",
        30,
        ("kfp",),
    ),
    Rule(
        "high-entropy-secret",
        "High-entropy literal in a secret-like name",
        Severity.ERROR,
        "A random-looking literal (high Shannon entropy) is assigned to a name that suggests "
        "a key, token or secret.",
        50,
        ("entropy",),
    ),
    Rule(
        "secret-assignment",
        "Literal assigned to a password/token/secret name",
        Severity.WARNING,
        "A password=, token:, secret= style assignment with a literal value that is not a "
        "placeholder, template or environment lookup.",
        60,
        ("generic",),
    ),
    Rule(
        "dotenv-file",
        "A .env file is committed",
        Severity.ERROR,
        "A .env file is tracked by git. .env files hold local secrets; add it to .gitignore "
        "and commit a .env.example with placeholders instead.",
        70,
        ("dotenv",),
    ),
    Rule(
        "dotenv-template-value",
        "Real-looking value in a .env template",
        Severity.ERROR,
        "A .env.example/.env.template/.env.sample line gives a secret-named key a real-looking "
        "value; templates should hold placeholders only.",
        35,
        ("dotenv",),
    ),
)

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
RULE_IDS: tuple[str, ...] = tuple(rule.id for rule in _RULES)


def get_rule(rule_id: str) -> Rule:
    """Return the rule for ``rule_id``; a KeyError names the unknown id."""
    try:
        return RULES[rule_id]
    except KeyError:
        raise KeyError(f"unknown scan rule id: {rule_id!r}") from None
