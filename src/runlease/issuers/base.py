"""The Issuer protocol: how a stored secret becomes a credential for one run.

``static`` hands out the stored value itself (the lease exists for audit,
masking and revocation bookkeeping); dynamic issuers (PostgreSQL roles, STS
sessions, Vault database creds) mint a fresh credential per lease and
destroy it on revoke. ``state`` is what the issuer needs to revoke later
(e.g. a role name); it is stored in the ledger, so it must never hold a
secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from runlease.models import Lease, RunIdentity, SecretValue
from runlease.store.base import StoredSecret


@dataclass(frozen=True)
class IssuedCredential:
    value: SecretValue = field(repr=False)
    #: When the credential itself stops working; None means "when the lease says".
    expires_at: datetime | None = None
    #: Non-secret facts needed to revoke (stored in the ledger).
    state: dict[str, Any] = field(default_factory=dict)


class Issuer(Protocol):
    name: str

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential: ...

    def revoke(self, lease: Lease) -> None:
        """Destroy what ``issue`` minted (using ``lease.issuer_state``); must be idempotent."""
        ...
