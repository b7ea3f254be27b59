"""Issuers by name. Dynamic issuers (postgres, aws-sts, vault-database) register here lazily."""

from __future__ import annotations

from runlease.errors import ConfigError
from runlease.issuers.aws_sts import AwsStsIssuer
from runlease.issuers.base import IssuedCredential, Issuer
from runlease.issuers.options import SecretLoader
from runlease.issuers.postgres import PostgresIssuer
from runlease.issuers.static import StaticIssuer
from runlease.issuers.vault_database import VaultDatabaseIssuer


class IssuerRegistry:
    """Name -> issuer; the broker asks for the issuer a secret's metadata names."""

    def __init__(self, *issuers: Issuer) -> None:
        self._issuers: dict[str, Issuer] = {}
        for issuer in issuers or (StaticIssuer(),):
            self.register(issuer)

    def register(self, issuer: Issuer) -> None:
        self._issuers[issuer.name] = issuer

    def get(self, name: str) -> Issuer:
        try:
            return self._issuers[name]
        except KeyError:
            raise ConfigError(
                f"unknown issuer {name!r} (available: {', '.join(sorted(self._issuers))})"
            ) from None


def standard_issuers(load_secret: SecretLoader) -> IssuerRegistry:
    """Every issuer this build ships. Dynamic ones re-read their secret (CURRENT) to revoke or renew.

    Their SDKs (psycopg, boto3, hvac) are imported on first use, so building
    the registry costs nothing when a deployment only uses ``static``.
    """
    return IssuerRegistry(
        StaticIssuer(), PostgresIssuer(load_secret), AwsStsIssuer(), VaultDatabaseIssuer(load_secret),
    )


__all__ = [
    "AwsStsIssuer", "IssuedCredential", "Issuer", "IssuerRegistry", "PostgresIssuer", "StaticIssuer",
    "VaultDatabaseIssuer", "standard_issuers",
]
