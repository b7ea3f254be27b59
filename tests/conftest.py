"""Session-wide test plumbing shared by unit and integration tests."""

# Reusable fixtures for external systems the tests start themselves (tests/support/):
# a throwaway PostgreSQL server, moto's server, a fake Vault, unreachable addresses.
pytest_plugins = ["support.postgres", "support.moto_server", "support.fake_vault", "support.unreachable"]
