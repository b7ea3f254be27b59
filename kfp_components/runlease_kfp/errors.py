"""Errors of the KFP adapter. They extend the core's so callers can catch :class:`RunleaseError`."""

from __future__ import annotations

from runlease.errors import ConfigError, RunleaseError


class RunIdentityError(ConfigError):
    """The component cannot tell which KFP run it belongs to.

    Raised instead of leasing with a partial identity: a lease that is not
    bound to its run would never be revoked by the run's exit handler.
    """


class RevocationError(RunleaseError):
    """A lease could not be revoked when the component left its ``with`` block.

    The lease stays valid until the run's exit handler revokes it or its TTL
    runs out, so the step fails loudly instead of pretending it cleaned up.
    """
