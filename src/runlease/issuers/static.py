"""The ``static`` issuer: the stored value is the credential.

Nothing is minted or destroyed, but the lease still binds the value to a
run, puts it in the audit trail and registers it with the redactor; revoking
it ends the run's claim (and later rotation retires the value itself).
"""

from __future__ import annotations

from datetime import timedelta

from runlease.issuers.base import IssuedCredential
from runlease.models import Lease, RunIdentity
from runlease.store.base import StoredSecret


class StaticIssuer:
    name = "static"

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential:
        return IssuedCredential(value=secret.value)

    def revoke(self, lease: Lease) -> None:
        return None
