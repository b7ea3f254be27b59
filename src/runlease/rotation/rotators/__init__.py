"""Rotators by name. The modules import their SDKs (psycopg, boto3) inside functions only."""

from __future__ import annotations

from runlease.errors import ConfigError
from runlease.rotation.rotators.base import RotationContext, Rotator


class RotatorRegistry:
    def __init__(self, rotators: list[Rotator] | None = None) -> None:
        self._rotators: dict[str, Rotator] = {}
        for rotator in rotators or []:
            self.register(rotator)

    def register(self, rotator: Rotator) -> None:
        self._rotators[rotator.name] = rotator

    def get(self, name: str) -> Rotator:
        try:
            return self._rotators[name]
        except KeyError:
            raise ConfigError(f"unknown rotator {name!r}: expected one of {', '.join(sorted(self._rotators))}") from None

    def names(self) -> list[str]:
        return sorted(self._rotators)


def standard_rotators() -> RotatorRegistry:
    from runlease.rotation.rotators.aws_iam_key import AwsIamKeyRotator
    from runlease.rotation.rotators.aws_secretsmanager import AwsSecretsManagerRotator
    from runlease.rotation.rotators.postgres import PostgresRotator
    from runlease.rotation.rotators.token import TokenRotator

    return RotatorRegistry([TokenRotator(), PostgresRotator(), AwsIamKeyRotator(), AwsSecretsManagerRotator()])


__all__ = ["RotationContext", "Rotator", "RotatorRegistry", "standard_rotators"]
