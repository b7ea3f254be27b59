"""Rotation errors: each says which secret, which rotation token and why -- never a value."""

from __future__ import annotations

from runlease.errors import ConflictError, RunleaseError


class RotationBusyError(ConflictError):
    """Another rotation of the same secret holds the claim (only one at a time)."""


class RotationNotReadyError(RunleaseError):
    """The previous rotation's grace period is still running: its PREVIOUS must retire first."""

    exit_code = 5


class RotationTestFailed(RunleaseError):
    """The ``test`` step's verdict: the PENDING credential does not work in the target.

    Distinct from an unreachable target (a :class:`~runlease.errors.BackendError`,
    worth a retry): this one is final, so the engine discards PENDING and marks
    the rotation failed.
    """

    exit_code = 10


class RotationFailedError(RunleaseError):
    """The rotation this token names already failed; start a new one."""

    exit_code = 10
