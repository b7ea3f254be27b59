"""The policy as ``runlease serve`` applies it: a workload is matched on what its token proved.

Behind the server, everything in a request body is a claim: a component can
say it runs for any pipeline (the attack in issue 11: a component claiming
``RUNLEASE_KFP_PIPELINE=victim_pipeline`` got the victim's grant). So for a
caller authenticated by a workload token, only grants that name
``workloads`` are considered; a ``principals``-only grant, which would match
on claimed fields, never grants a workload anything through the server. An
operator's admin token is trusted like the local CLI and is matched against
every grant. Without a policy file the server does not start (allow-all
would hand every authenticated pod every secret).
"""

from __future__ import annotations

from runlease.errors import ConfigError
from runlease.models import Capability, RunIdentity, SecretPath
from runlease.policy.grants import Policy


class ServerPolicy:
    def __init__(self, policy: Policy) -> None:
        if not policy.enforced:
            raise ConfigError("runlease serve needs a policy file (RUNLEASE_HOME/policy.toml or "
                              "RUNLEASE_POLICY_FILE): without one every authenticated workload could lease everything")
        self.policy = policy
        self.source = policy.source
        self.enforced = True
        self.grants = policy.grants

    def allows(self, identity: RunIdentity, path: SecretPath, capability: Capability) -> bool:
        if identity.workload is not None:
            return any(g.workloads and g.matches(identity, path, capability) for g in self.grants)
        return self.policy.allows(identity, path, capability)
