"""Least privilege per environment: which principals may do what on which paths.

The policy file (TOML, ``$RUNLEASE_HOME/policy.toml`` by default) is a list
of grants. With no file, everything is allowed (the zero-setup default);
once a file exists, anything not granted is denied. Example::

    [[grant]]
    principals   = ["airflow:training_*"]   # orchestrator:pipeline[:task], globs
    environments = ["dev", "stage"]          # or ["*"]
    paths        = ["connections/warehouse", "variables/*"]   # kind/name globs
    capabilities = ["lease", "read"]         # read | lease | rotate | admin

A grant may instead (or also) name verified workloads::

    [[grant]]
    workloads    = ["system:serviceaccount:ml:pipeline-a"]   # OIDC subjects, globs
    environments = ["prod"]
    paths        = ["connections/warehouse"]
    capabilities = ["lease"]

It matches only a request whose workload token ``runlease serve`` verified;
with both ``workloads`` and ``principals``, both must match.
``require_verified = true`` makes ``principals`` match only identities whose
pipeline a trusted party proved (Airflow API-server mode), never a claim.

A principal pattern with fewer segments than ``orchestrator:pipeline:task``
matches any value in the missing ones, so ``airflow:training_*`` covers every
task of matching DAGs. ``admin`` implies every capability. The broker
enforces this in-process; the same file renders Vault and IAM policies in
production, where the manager is the real boundary.
"""

from __future__ import annotations

import os
import sys
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runlease.errors import ConfigError
from runlease.integrity.home_guard import UnsafeHomeError, check_file, open_nofollow
from runlease.models import Capability, RunIdentity, SecretPath

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: ``orchestrator:pipeline[:task]`` globs, matched against the identity's fields.
    principals: list[str] = Field(default_factory=list)
    #: Verified workload subjects (OIDC ``sub``, e.g. ``system:serviceaccount:ml:pipeline-a``), globs.
    #: A grant naming workloads matches only an authenticated request from one of them.
    workloads: list[str] = Field(default_factory=list)
    #: When true, ``principals`` match only identities whose pipeline a trusted party proved
    #: (Airflow API-server mode, runlease serve); a claimed pipeline never matches.
    require_verified: bool = False
    environments: list[str] = Field(min_length=1)
    paths: list[str] = Field(min_length=1)
    capabilities: list[Capability] = Field(min_length=1)
    description: str = ""

    @model_validator(mode="after")
    def _someone(self) -> "Grant":
        if not self.principals and not self.workloads:
            raise ValueError("a grant needs 'principals' or 'workloads' (or both)")
        return self

    @field_validator("paths")
    @classmethod
    def _kind_name(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if p.count("/") != 1 and p != "*":
                raise ValueError(f"path glob {p!r} must be <kind>/<name> (the environment goes in 'environments')")
        return paths

    def matches(self, identity: RunIdentity, path: SecretPath, capability: Capability) -> bool:
        if Capability.ADMIN not in self.capabilities and capability not in self.capabilities:
            return False
        if not any(fnmatchcase(path.env, e) for e in self.environments):
            return False
        rel = f"{path.kind}/{path.name}"
        if not any(fnmatchcase(rel, p) for p in self.paths):
            return False
        if self.workloads:
            workload = identity.workload
            if workload is None or not any(fnmatchcase(workload, w) for w in self.workloads):
                return False
        if self.principals:
            if self.require_verified and not identity.is_verified("pipeline"):
                return False
            return any(_principal_matches(p, identity) for p in self.principals)
        return True


def _principal_matches(pattern: str, identity: RunIdentity) -> bool:
    subject = [identity.orchestrator, identity.pipeline, identity.task_id or "-"]
    wanted = pattern.split(":")
    if len(wanted) > 3:
        return False
    return all(fnmatchcase(value, glob) for value, glob in zip(subject, wanted))


class Policy(BaseModel):
    """A parsed policy; ``enforced`` is False when no policy file exists (allow all)."""

    grants: list[Grant] = Field(default_factory=list, alias="grant")
    enforced: bool = True
    source: str = "<none>"

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    @classmethod
    def allow_all(cls) -> "Policy":
        return cls(grants=[], enforced=False)

    @classmethod
    def load(cls, path: Path) -> "Policy":
        """Read a policy file; a missing file means allow-all, a broken one is an error.

        "Missing" means nothing at all at ``path``: a dangling or looping
        symlink, a file owned by another user (other than root) or writable by
        group/others is an error (:mod:`runlease.integrity.home_guard`), never allow-all.
        """
        if not check_file(path, "policy file", allow_root=True, follow_links=True):
            return cls.allow_all()
        try:
            text = open_nofollow(Path(os.path.realpath(path)), "policy file", UnsafeHomeError).decode()
            doc = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"policy file {path} is not valid TOML or cannot be read: {err}") from None
        internal = sorted({"enforced", "source"} & doc.keys())
        if internal:
            # Set by the loader, not the file: a policy file must not be able to turn enforcement off.
            raise ConfigError(f"policy file {path} is invalid: {', '.join(internal)}: not a policy file setting")
        try:
            return cls.model_validate({**doc, "source": str(path)})
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
            )
            raise ConfigError(f"policy file {path} is invalid: {problems}") from None

    def allows(self, identity: RunIdentity, path: SecretPath, capability: Capability) -> bool:
        if not self.enforced:
            return True
        return any(g.matches(identity, path, capability) for g in self.grants)


EXAMPLE_POLICY = '''\
# runlease policy. Rename to policy.toml to enforce it: once policy.toml
# exists, everything not granted here is denied (and every denial audited).

[[grant]]
description  = "operators at the command line manage everything"
principals   = ["cli"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]

[[grant]]
description  = "training DAGs lease the warehouse and model-registry credentials in dev and stage"
principals   = ["airflow:training_*"]
environments = ["dev", "stage"]
paths        = ["connections/warehouse", "connections/model_registry", "variables/*"]
capabilities = ["lease"]
'''
