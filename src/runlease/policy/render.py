"""Render the one policy file as Vault HCL policies and AWS IAM policy documents.

In production the central manager is the real enforcement boundary, so the
grants the broker enforces in-process must also exist there, and must mean
exactly the same: every path a grant names, with exactly the permissions
its capabilities map to, and nothing wider (docs/policy.md has the table).

One output per principal pattern (the string in ``principals``), because
that is what an operator attaches to one identity (a Vault role's token
policies, an IAM role). A grant that lists several principals contributes
to each of their outputs.

Grants naming verified ``workloads`` (OIDC subjects such as
``system:serviceaccount:ml:pipeline-a``) render one output per workload
pattern too (keyed ``workload:<pattern>``), plus the Vault *auth roles* that
hand exactly that policy to exactly that workload: a JWT auth role bound to
the token's ``sub`` (``bound_claims_type = "glob"``) and audience, and, when
the pattern names one namespace and service account, a Kubernetes auth
role bound to them. Vault's claim globs know only ``*``, so ``?`` and
character classes are refused, as elsewhere here.

Exactness is the hard part:

* Vault path rules support only ``+`` (one whole segment) and a trailing
  ``*`` (prefix). An environment or kind glob must therefore be literal or
  ``*``; a name glob must be literal or end in its only ``*``. Anything else
  cannot be rendered exactly and is refused, naming the grant.
* Within one Vault policy, when several path rules match a request, only the
  highest-priority rule applies (Vault's "priority matching"), not the union.
  Overlapping grants (``+/connections/warehouse`` admin and
  ``dev/connections/*`` read) would silently lose capabilities. So the rule set
  is closed under intersection: for every overlap an explicit rule with the
  union of capabilities is added, and the intersection always outranks the
  rules it came from (proof sketch in docs/policy.md).
* IAM resource wildcards are ``*`` and ``?`` and statements are unioned, so
  globs map directly; character classes (``[abc]``) exist in neither and are
  refused. Secret ARNs end in ``-`` plus six random characters, rendered as
  ``-??????`` so ``warehouse`` never also matches ``warehouse-old``. CreateSecret
  (no ARN suffix exists yet) is pinned to the exact names by the
  ``secretsmanager:Name`` condition key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from runlease.errors import ConfigError
from runlease.models import Capability
from runlease.policy.grants import Grant, Policy

# -- the capability mapping (docs/policy.md) -----------------------------------------

#: KV v2 path families and the Vault capabilities each runlease capability needs on them.
#: Every rule is rendered twice: for the value path ``<prefix>/<env>/<kind>/<name>`` and for
#: the secret's state record ``<prefix>/_state/<env>/<kind>/<name>``, where the Vault store
#: keeps the authoritative stage map (CURRENT/PENDING/PREVIOUS): resolving CURRENT is a data
#: read of the state record, then a data read of the value. Metadata ``read`` lets a reader
#: see the version list (``history``); rotate writes the custom_metadata mirror and
#: soft-deletes (``delete/``) a version that lost a check-and-set race.
VAULT_CAPABILITIES: dict[Capability, dict[str, frozenset[str]]] = {
    Capability.READ: {"data": frozenset({"read"}), "metadata": frozenset({"read"})},
    Capability.LEASE: {"data": frozenset({"read"}), "metadata": frozenset({"read"})},
    Capability.ROTATE: {
        "data": frozenset({"create", "update", "read"}),
        "metadata": frozenset({"create", "update", "read"}),
        "delete": frozenset({"update"}),
    },
    Capability.ADMIN: {
        "data": frozenset({"create", "read", "update", "patch", "delete", "list"}),
        "metadata": frozenset({"create", "read", "update", "patch", "delete", "list"}),
        "delete": frozenset({"update"}),
        "undelete": frozenset({"update"}),
        "destroy": frozenset({"update"}),
    },
}
VAULT_FAMILIES: tuple[str, ...] = ("data", "metadata", "delete", "undelete", "destroy")
#: Where the Vault store keeps state records under its prefix (runlease.store.vault.STATE_DIR).
VAULT_STATE_DIR = "_state"
_VAULT_CAP_ORDER = ("create", "read", "update", "patch", "delete", "list")

_READ_ACTIONS = ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")
_ROTATE_ACTIONS = ("secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage")
_ADMIN_ACTIONS = ("secretsmanager:CreateSecret", "secretsmanager:DeleteSecret", "secretsmanager:TagResource")
#: IAM actions per runlease capability (rotate and admin include everything below them).
IAM_ACTIONS: dict[Capability, tuple[str, ...]] = {
    Capability.READ: _READ_ACTIONS,
    Capability.LEASE: _READ_ACTIONS,
    Capability.ROTATE: _READ_ACTIONS + _ROTATE_ACTIONS,
    Capability.ADMIN: _READ_ACTIONS + _ROTATE_ACTIONS + _ADMIN_ACTIONS,
}
#: Actions on a secret that does not exist yet: there is no random suffix to match, so
#: the statement pins the exact name with the ``secretsmanager:Name`` condition key instead.
IAM_CREATE_ACTIONS = frozenset({"secretsmanager:CreateSecret"})
ARN_SUFFIX = "-??????"

_GLOB_CHARS = re.compile(r"[*?\[\]]")


class RenderError(ConfigError):
    """A grant cannot be expressed exactly in the target format."""


@dataclass(frozen=True)
class RenderOptions:
    mount: str = "secret"
    prefix: str = "runlease"
    region: str = "us-east-1"
    account: str = ""
    partition: str = "aws"
    #: Audience workload tokens carry (``runlease serve --oidc-audience``); Vault roles bind it.
    audience: str = "runlease"
    #: Vault token TTL of a workload's login.
    token_ttl: str = "15m"


WORKLOAD_KEY_PREFIX = "workload:"
_SA_SUBJECT = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")

def policy_name(principal: str) -> str:
    """A Vault/IAM-safe name per principal pattern; the hash keeps two similar patterns apart."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", principal.replace("*", "all")).strip("-")[:48] or "principal"
    return f"runlease-{slug}-{hashlib.sha256(principal.encode()).hexdigest()[:8]}"


def grants_by_principal(policy: Policy) -> dict[str, list[Grant]]:
    out: dict[str, list[Grant]] = {}
    for grant in policy.grants:
        for principal in grant.principals:
            out.setdefault(principal, []).append(grant)
    return out


def grants_by_workload(policy: Policy) -> dict[str, list[Grant]]:
    out: dict[str, list[Grant]] = {}
    for grant in policy.grants:
        for workload in grant.workloads:
            out.setdefault(workload, []).append(grant)
    return out


def vault_auth_roles(workload: str, policy: str, opts: RenderOptions) -> dict[str, dict[str, object]]:
    """Vault auth roles that give ``policy`` to exactly the workload(s) ``workload`` matches.

    ``jwt``: for ``auth/jwt/role/<policy>`` (JWT auth configured with the
    cluster's issuer and JWKS). ``kubernetes``: for ``auth/kubernetes/role/<policy>``,
    only when the pattern is ``system:serviceaccount:<ns>:<sa>`` with literal
    (or whole-``*``) parts, which is what that method can bind.
    """
    if "?" in workload or "[" in workload or "]" in workload:
        raise RenderError(f"workload pattern {workload!r}: Vault claim globs support only '*'; "
                          "list the workloads explicitly")
    roles: dict[str, dict[str, object]] = {"jwt": {
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_audiences": [opts.audience],
        "bound_claims_type": "glob",
        "bound_claims": {"sub": workload},
        "token_policies": [policy],
        "token_ttl": opts.token_ttl,
        "token_max_ttl": opts.token_ttl,
    }}
    match = _SA_SUBJECT.fullmatch(workload)
    if match is not None:
        namespace, account = match.groups()
        literal = all(part == "*" or "*" not in part for part in (namespace, account))
        if literal and not (namespace == "*" and account == "*"):
            roles["kubernetes"] = {
                "bound_service_account_names": [account],
                "bound_service_account_namespaces": [namespace],
                "audience": opts.audience,
                "token_policies": [policy],
                "token_ttl": opts.token_ttl,
                "token_max_ttl": opts.token_ttl,
            }
    return roles


def _split(path_glob: str) -> tuple[str, str]:
    return ("*", "*") if path_glob == "*" else tuple(path_glob.split("/", 1))  # type: ignore[return-value]


def _describe(grant: Grant) -> str:
    return grant.description or f"{grant.principals} on {grant.environments} {grant.paths}"


# -- Vault ------------------------------------------------------------------------------

# A segment pattern: ("lit", text) | ("any", "") for ``+`` | ("prefix", text) for ``text*``.
Seg = tuple[str, str]
Rule = tuple[Seg, Seg, Seg]


def _check_segment(glob: str, where: str, grant: Grant) -> None:
    if "/" in glob or not glob:
        raise RenderError(f"grant '{_describe(grant)}': {where} {glob!r} must be one non-empty path segment")


def _vault_seg(glob: str, *, last: bool, where: str, grant: Grant) -> Seg:
    _check_segment(glob, where, grant)
    if not _GLOB_CHARS.search(glob):
        return ("lit", glob)
    if glob == "*":
        return ("prefix", "") if last else ("any", "")
    if last and glob.endswith("*") and not _GLOB_CHARS.search(glob[:-1]):
        return ("prefix", glob[:-1])
    raise RenderError(
        f"grant '{_describe(grant)}': {where} glob {glob!r} cannot be expressed exactly as a Vault path "
        "(Vault supports a whole-segment '+' and a trailing '*' only); list the values explicitly"
    )


def _seg_intersect(a: Seg, b: Seg) -> Seg | None:
    (ka, ta), (kb, tb) = a, b
    if ka == "any":
        return b
    if kb == "any":
        return a
    if ka == "lit" and kb == "lit":
        return a if ta == tb else None
    if ka == "lit":
        return a if ta.startswith(tb) else None
    if kb == "lit":
        return b if tb.startswith(ta) else None
    if ta.startswith(tb):
        return a
    return b if tb.startswith(ta) else None


def _seg_contains(a: Seg, b: Seg) -> bool:
    """Every value ``b`` matches, ``a`` matches too."""
    return _seg_intersect(a, b) == b


def _intersect(a: Rule, b: Rule) -> Rule | None:
    parts = [_seg_intersect(x, y) for x, y in zip(a, b, strict=True)]
    return None if any(p is None for p in parts) else tuple(parts)  # type: ignore[return-value]


def _closure(rules: Iterable[Rule]) -> set[Rule]:
    """Add the intersection of every overlapping pair until nothing new appears."""
    closed = set(rules)
    frontier = set(closed)
    while frontier:
        new: set[Rule] = set()
        for a in frontier:
            for b in closed:
                c = _intersect(a, b)
                if c is not None and c not in closed:
                    new.add(c)
        closed |= new
        frontier = new
    return closed


def _seg_text(seg: Seg) -> str:
    kind, text = seg
    return {"lit": text, "any": "+", "prefix": text + "*"}[kind]


def vault_rules(grants: list[Grant], opts: RenderOptions) -> dict[str, list[str]]:
    """Vault path -> capabilities for one principal's grants, exact under priority matching."""
    base: dict[Rule, dict[str, set[str]]] = {}
    for grant in grants:
        families: dict[str, set[str]] = {}
        for capability in grant.capabilities:
            for family, caps in VAULT_CAPABILITIES[capability].items():
                families.setdefault(family, set()).update(caps)
        for env in grant.environments:
            env_seg = _vault_seg(env, last=False, where="environment", grant=grant)
            for path_glob in grant.paths:
                kind, name = _split(path_glob)
                rule = (env_seg, _vault_seg(kind, last=False, where=f"kind in path {path_glob!r},", grant=grant),
                        _vault_seg(name, last=True, where=f"name in path {path_glob!r},", grant=grant))
                merged = base.setdefault(rule, {})
                for family, caps in families.items():
                    merged.setdefault(family, set()).update(caps)
    out: dict[str, set[str]] = {}
    mount = opts.mount.strip("/")
    prefix = f"{opts.prefix.strip('/')}/" if opts.prefix.strip("/") else ""
    for rule in _closure(base):
        caps: dict[str, set[str]] = {}
        for original, families in base.items():
            if all(_seg_contains(o, r) for o, r in zip(original, rule, strict=True)):
                for family, family_caps in families.items():
                    caps.setdefault(family, set()).update(family_caps)
        tail = "/".join(_seg_text(s) for s in rule)
        for family in VAULT_FAMILIES:
            if caps.get(family):
                # the value and its state record: a secret is both (see VAULT_CAPABILITIES)
                for where in (f"{prefix}{tail}", f"{prefix}{VAULT_STATE_DIR}/{tail}"):
                    out.setdefault(f"{mount}/{family}/{where}", set()).update(caps[family])
    # `runlease ls` walks the state records folder by folder: admin may list the folders
    # leading to what it administers (names only; values need data read).
    for rule, families in base.items():
        if "list" not in families.get("metadata", set()):
            continue
        env, kind = _seg_text(rule[0]), _seg_text(rule[1])
        for folder in ("", f"{env}/", f"{env}/{kind}/"):
            out.setdefault(f"{mount}/metadata/{prefix}{VAULT_STATE_DIR}/{folder}", set()).add("list")
    return {path: [c for c in _VAULT_CAP_ORDER if c in caps] for path, caps in sorted(out.items())}


def render_vault_hcl(principal: str, grants: list[Grant], opts: RenderOptions) -> str:
    lines = [
        f"# runlease policy for principal {json.dumps(principal)}",
        "# Generated by `runlease policy render --format vault-hcl`; edit the policy file, not this.",
        f"# KV v2 mount {json.dumps(opts.mount)}, path prefix {json.dumps(opts.prefix)}.",
    ]
    for path, caps in vault_rules(grants, opts).items():
        lines += ["", f"path {json.dumps(path)} {{", f"  capabilities = {json.dumps(caps)}", "}"]
    return "\n".join(lines) + "\n"


# -- AWS IAM ----------------------------------------------------------------------------


def _iam_glob(glob: str, where: str, grant: Grant) -> str:
    _check_segment(glob, where, grant)
    if "[" in glob or "]" in glob:
        raise RenderError(
            f"grant '{_describe(grant)}': {where} glob {glob!r} uses a character class, which IAM cannot "
            "express; list the values explicitly"
        )
    return glob


def _sid(*parts: str) -> str:
    return "".join(re.sub(r"[^A-Za-z0-9]", "", p.title()) for p in parts)[:100]


def render_iam(principal: str, grants: list[Grant], opts: RenderOptions) -> dict[str, object]:
    """One IAM policy document: a statement per grant, resources scoped to the secrets' ARNs."""
    if not re.fullmatch(r"\d{12}", opts.account):
        raise ConfigError("--account must be the 12-digit AWS account id that holds the secrets")
    prefix = f"{opts.prefix.strip('/')}/" if opts.prefix.strip("/") else ""
    arn_base = f"arn:{opts.partition}:secretsmanager:{opts.region}:{opts.account}:secret:"
    statements: list[dict[str, object]] = []
    for index, grant in enumerate(grants, start=1):
        names: list[str] = []  # secret-name globs, e.g. runlease/dev/connections/warehouse
        for env in grant.environments:
            env_glob = _iam_glob(env, "environment", grant)
            for path_glob in grant.paths:
                kind, name = _split(path_glob)
                kind_glob = _iam_glob(kind, f"kind in path {path_glob!r},", grant)
                name_glob = _iam_glob(name, f"name in path {path_glob!r},", grant)
                names.append(f"{prefix}{env_glob}/{kind_glob}/{name_glob}")
        names = sorted(dict.fromkeys(names))
        actions: list[str] = []
        for capability in grant.capabilities:
            actions += [a for a in IAM_ACTIONS[capability] if a not in actions]
        existing = sorted(a for a in actions if a not in IAM_CREATE_ACTIONS)
        creating = sorted(a for a in actions if a in IAM_CREATE_ACTIONS)
        statements.append({"Sid": _sid(f"grant{index}", "existing"), "Effect": "Allow", "Action": existing,
                           "Resource": [arn_base + n + ARN_SUFFIX for n in names]})
        if creating:
            statements.append({
                "Sid": _sid(f"grant{index}", "create"), "Effect": "Allow", "Action": creating,
                "Resource": sorted(dict.fromkeys(arn_base + (n if n.endswith("*") else n + "*") for n in names)),
                "Condition": {"StringLike": {"secretsmanager:Name": names}},
            })
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class Rendered:
    """What ``policy render`` produces: per principal, a policy name and its document text."""

    fmt: str
    documents: dict[str, tuple[str, str]] = field(default_factory=dict)  # principal -> (name, text)
    #: ``workload:<pattern>`` -> Vault auth method -> role document (vault-hcl only).
    roles: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)

    @property
    def extension(self) -> str:
        return "hcl" if self.fmt == "vault-hcl" else "json"


def render(policy: Policy, fmt: str, opts: RenderOptions) -> Rendered:
    if not policy.enforced or not policy.grants:
        raise ConfigError("the policy file has no grants; nothing to render")
    out = Rendered(fmt)
    subjects = [*grants_by_principal(policy).items(),
                *((WORKLOAD_KEY_PREFIX + w, g) for w, g in grants_by_workload(policy).items())]
    for principal, grants in subjects:
        if fmt == "vault-hcl":
            text = render_vault_hcl(principal, grants, opts)
        elif fmt == "aws-iam":
            text = json.dumps(render_iam(principal, grants, opts), indent=2) + "\n"
        else:
            raise ConfigError(f"unknown format {fmt!r}: expected vault-hcl or aws-iam")
        name = policy_name(principal)
        out.documents[principal] = (name, text)
        if fmt == "vault-hcl" and principal.startswith(WORKLOAD_KEY_PREFIX):
            out.roles[principal] = vault_auth_roles(principal.removeprefix(WORKLOAD_KEY_PREFIX), name, opts)
    return out
