"""``runlease policy render``: the policy file as Vault HCL policies or AWS IAM policy documents.

With ``--output-dir`` each principal's policy is written to its own file
(``<policy-name>.hcl`` / ``.json``) plus ``index.json`` mapping principal ->
file (workload grants: key ``workload:<pattern>``, plus
``<policy-name>.jwt-role.json`` and, for one service account,
``<policy-name>.kubernetes-role.json`` for ``vault write auth/<method>/role/<name> @file``), ready for ``vault policy write`` or ``aws iam put-role-policy``. Without
it, the documents go to stdout: HCL separated by a ``# ---`` header line per
principal, IAM as one JSON object keyed by principal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from runlease.cli.common import cli_errors, err_console
from runlease.errors import ConfigError
from runlease.policy.grants import Policy
from runlease.policy.render import RenderOptions, render

policy_app = typer.Typer(help="Render the policy file for the central manager (Vault, AWS IAM).",
                         no_args_is_help=True)


@policy_app.command("render")
@cli_errors
def render_command(
    policy_file: Path = typer.Argument(..., help="the policy file (TOML) to render"),
    fmt: str = typer.Option(..., "--format", help="vault-hcl | aws-iam"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="write one file per principal here"),
    mount: str = typer.Option("secret", "--mount", help="Vault KV v2 mount"),
    prefix: str = typer.Option("runlease", "--prefix", help="path prefix before <env>/<kind>/<name> (Vault and AWS)"),
    region: str = typer.Option("us-east-1", "--region", help="AWS region of the secrets"),
    account: str = typer.Option("", "--account", help="12-digit AWS account id (aws-iam)"),
    partition: str = typer.Option("aws", "--partition", help="AWS partition (aws, aws-cn, aws-us-gov)"),
    audience: str = typer.Option("runlease", "--audience",
                                 help="audience of workload tokens, bound by the Vault auth roles of workload grants"),
) -> None:
    """Turn each principal's grants into exactly the Vault/IAM permissions they map to (docs/policy.md)."""
    if not policy_file.is_file():
        raise ConfigError(f"policy file {policy_file} does not exist")
    rendered = render(Policy.load(policy_file), fmt,
                      RenderOptions(mount=mount, prefix=prefix, region=region, account=account, partition=partition,
                                    audience=audience))
    if output_dir is None:
        if fmt == "aws-iam":
            doc = {principal: json.loads(text) for principal, (_, text) in rendered.documents.items()}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            for principal, (name, text) in rendered.documents.items():
                sys.stdout.write(f"# --- policy {name} (principal {json.dumps(principal)})\n{text}\n")
                for method, role in rendered.roles.get(principal, {}).items():
                    sys.stdout.write(f"# --- vault write auth/{method}/role/{name} (as JSON):\n")
                    sys.stdout.write("".join(f"# {line}\n" for line in json.dumps(role, indent=2).splitlines()) + "\n")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    for principal, (name, text) in rendered.documents.items():
        target = output_dir / f"{name}.{rendered.extension}"
        target.write_text(text)
        index[principal] = target.name
        for method, role in rendered.roles.get(principal, {}).items():
            (output_dir / f"{name}.{method}-role.json").write_text(json.dumps(role, indent=2) + "\n")
    (output_dir / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    err_console.print(f"wrote {len(index)} {fmt} policies to {output_dir}")
