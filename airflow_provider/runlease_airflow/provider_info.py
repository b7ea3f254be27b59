"""The ``apache_airflow_provider`` entry point: what ``airflow providers list`` shows.

Airflow's provider discovery (``airflow/_shared/providers_discovery/providers_discovery.py``,
``discover_all_providers_from_packages``) calls this function in every process
that initialises providers, validates the dict against
``airflow/provider_info.schema.json`` and requires ``package-name`` to equal the
distribution's canonical name -- which is ``runlease``. So this module imports
nothing.

The listener plugin is also listed under ``plugins``, but Airflow only loads
provider-info plugins when lazy provider discovery is off
(``settings.LAZY_LOAD_PROVIDERS``, see ``airflow/sdk/plugins_manager.py``
``_get_plugins``); the ``airflow.plugins`` entry point in pyproject.toml is what
loads it in every configuration. Plugins are de-duplicated by name, so the
listener is registered once either way.
"""

from __future__ import annotations

from typing import Any

from runlease_airflow import __version__

PACKAGE_NAME = "runlease"
INTEGRATION = "runlease"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE_NAME,
        "name": "runlease",
        "description": (
            "Run-bound, short-lived, audited credentials: a secrets backend that leases every "
            "connection, variable and config value to the task try that asked, masks it, and "
            "revokes it when the task or run ends."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["software"],
            }
        ],
        "secrets-backends": ["runlease_airflow.secrets.RunleaseBackend"],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["runlease_airflow.hooks.runlease"]}],
        "connection-types": [
            {
                "connection-type": "runlease",
                "hook-class-name": "runlease_airflow.hooks.runlease.RunleaseHook",
                "hook-name": "runlease",
            }
        ],
        "plugins": [{"name": "runlease", "plugin-class": "runlease_airflow.plugin.RunleasePlugin"}],
    }
