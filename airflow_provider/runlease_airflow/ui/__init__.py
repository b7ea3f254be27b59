"""runlease in the Airflow UI: pages served by the API server, linked from Airflow's own pages.

:mod:`runlease_airflow.plugin` registers :data:`FASTAPI_APPS` (the pages, at
``/runlease``) and :data:`EXTERNAL_VIEWS` (a navigation entry, a "Credentials"
tab on every DAG run and task instance, a "Secret rotation" entry). Nothing
heavy is imported here: the plugin module is loaded by every Airflow process,
and only the API server builds the FastAPI app, on its first request.
"""

from __future__ import annotations

from typing import Any

URL_PREFIX = "/runlease"


class LazyApp:
    """An ASGI app that builds the FastAPI app (:func:`runlease_airflow.ui.app.create_app`) on first use."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from runlease_airflow.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


FASTAPI_APPS: list[dict[str, Any]] = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "runlease"}]

#: Airflow's UI substitutes {DAG_ID}, {RUN_ID}, {TASK_ID} and {MAP_INDEX} (URL-encoded) in the href of
#: views whose destination is a DAG run or task instance, and shows them as a tab in an iframe.
EXTERNAL_VIEWS: list[dict[str, Any]] = [
    {"name": "runlease", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "runlease",
     "category": "browse"},
    {"name": "Secret rotation", "href": f"{URL_PREFIX}/rotation", "destination": "nav",
     "url_route": "runlease-rotation", "category": "browse"},
    {"name": "Credentials", "href": f"{URL_PREFIX}/run?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
     "destination": "dag_run", "url_route": "runlease-run"},
    {"name": "Credentials",
     "href": f"{URL_PREFIX}/task?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}",
     "destination": "task_instance", "url_route": "runlease-task"},
]
