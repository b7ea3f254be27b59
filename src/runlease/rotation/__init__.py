"""Credential rotation with two valid versions at once: see :mod:`runlease.rotation.engine`."""

from runlease.rotation.engine import RotationEngine, new_token
from runlease.rotation.errors import RotationBusyError, RotationFailedError, RotationNotReadyError, RotationTestFailed
from runlease.rotation.policy import RotationPolicy
from runlease.rotation.state import RotationState, Status, Step

__all__ = [
    "RotationBusyError", "RotationEngine", "RotationFailedError", "RotationNotReadyError", "RotationPolicy",
    "RotationState", "RotationTestFailed", "Status", "Step", "new_token",
]
