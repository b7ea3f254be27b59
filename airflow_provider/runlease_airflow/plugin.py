"""The Airflow plugin that registers :mod:`runlease_airflow.listener` and the UI pages (:mod:`runlease_airflow.ui`).

Registered through the ``airflow.plugins`` entry point (pyproject.toml), which
Airflow loads in every process whatever the provider discovery mode
(``airflow/_shared/plugins_manager/plugins_manager.py``
``_load_entrypoint_plugins``). Airflow validates plugins by class *name*
(``is_valid_plugin``: any base named ``AirflowPlugin`` from a
``plugins_manager`` module), so the Task SDK's class works in core processes too.
"""

from __future__ import annotations

try:
    from airflow.sdk.plugins_manager import AirflowPlugin
except ImportError:  # pragma: no cover - core-only installs
    from airflow.plugins_manager import AirflowPlugin  # type: ignore[no-redef]

from runlease_airflow import listener
from runlease_airflow.ui import EXTERNAL_VIEWS, FASTAPI_APPS
from runlease_airflow.api_server import ROOT_MIDDLEWARE


class RunleasePlugin(AirflowPlugin):
    name = "runlease"
    listeners = [listener]
    # runlease pages in the Airflow UI (runlease_airflow/ui): served by the API server, linked from its pages.
    fastapi_apps = FASTAPI_APPS
    external_views = EXTERNAL_VIEWS
    # API-server mode: verified task identity and trusted-side revocation (runlease_airflow.api_server).
    fastapi_root_middlewares = [ROOT_MIDDLEWARE]
