"""The runlease pages, a FastAPI app the Airflow API server mounts at ``/runlease``.

Server-rendered HTML (Jinja2 with autoescaping: run ids, task ids and
reasons are chosen by DAG authors) without scripts, so the pages work inside
the Airflow UI's sandboxed iframes and need no build step.

Pages (query parameters, because run ids contain ``:`` and ``+``):

- ``/runlease/``                      runs with leases, for DAGs the user may read
- ``/runlease/run?dag_id=&run_id=``   one run: leases by task try, denials, audit events, chain status
- ``/runlease/task?dag_id=&run_id=&task_id=&map_index=``  the same for one task (all its tries)
- ``/runlease/rotation``              every secret with a rotation policy

Access: :mod:`runlease_airflow.ui.access`. Without a valid token the browser
is sent to Airflow's login page; an authenticated user without the permission
gets 403 and no data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from runlease_airflow.ui import access, queries

log = logging.getLogger(__name__)

TEMPLATES = Environment(
    loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=select_autoescape(["html"], default=True),
)
#: Pages hold who-used-what metadata: never cached, never framed by another site, no referrer leaks.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'",
    "Referrer-Policy": "no-referrer",
}


def _runtime() -> Any:
    """The runtime of the RunleaseBackend this API server is configured with."""
    from runlease_airflow.discovery import configured_backend

    backend = configured_backend()
    if backend is None:
        raise HTTPException(status_code=503, detail="runlease is not this Airflow's secrets backend")
    return backend.state.runtime


def _page(request: Request, template: str, user: Any, status_code: int = 200, **context: Any) -> HTMLResponse:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    html = TEMPLATES.get_template(template).render(root=root, user=access.username(user), **context)
    return HTMLResponse(html, status_code=status_code, headers=HEADERS)


def _map_index(raw: Optional[str]) -> Optional[int]:
    # The Airflow UI leaves the {MAP_INDEX} placeholder as is on an unmapped task's page.
    if raw in (None, "", "-1", "{MAP_INDEX}"):
        return None
    try:
        index = int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise HTTPException(status_code=400, detail="map_index must be an integer") from None
    return None if index < 0 else index


async def _user(request: Request) -> Any:
    """Airflow's own token check (cookie or bearer); 401 becomes a redirect to the login page."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    bearer = None
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=header[7:].strip())
    try:
        return await get_user(request, None, bearer)
    except HTTPException as err:
        if err.status_code in (401, 403) and not bearer:
            raise _LoginRequired(str(request.url)) from None
        raise


class _LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        super().__init__("login required")
        self.next_url = next_url


def create_app() -> FastAPI:
    app = FastAPI(title="runlease", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_LoginRequired)
    async def _to_login(request: Request, exc: _LoginRequired) -> Response:
        return RedirectResponse(access.login_url(exc.next_url), status_code=303)

    @app.exception_handler(HTTPException)
    async def _error_page(request: Request, exc: HTTPException) -> Response:
        html = TEMPLATES.get_template("error.html").render(
            root=str(request.scope.get("root_path", "")).rstrip("/"), user="", title=f"{exc.status_code}",
            message=str(exc.detail))
        return HTMLResponse(html, status_code=exc.status_code, headers=HEADERS)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: Any = Depends(_user)) -> HTMLResponse:
        rt = _runtime()
        runs = queries.recent_runs(rt)
        allowed: dict[str, bool] = {}
        for dag_id in {r.dag_id for r in runs}:
            allowed[dag_id] = access.can_read_dag_runs(user, dag_id)
        visible = [r for r in runs if allowed[r.dag_id]]
        # Not even a count of the others: that would tell a user that runs of a DAG they cannot read exist.
        return _page(request, "index.html", user, title="runs", runs=visible, chain=queries.chain_status(rt))

    def _run_page(request: Request, user: Any, dag_id: str, run_id: str, task_id: Optional[str],
                  map_index: Optional[str]) -> HTMLResponse:
        if not dag_id or not run_id:
            raise HTTPException(status_code=400, detail="dag_id and run_id are required")
        if not access.can_read_dag_runs(user, dag_id, task_level=task_id is not None):
            raise HTTPException(status_code=403, detail=f"you may not read the runs of DAG {dag_id}")
        view = queries.run_view(_runtime(), dag_id, run_id, task_id=task_id, map_index=_map_index(map_index))
        return _page(request, "run.html", user, title=f"{dag_id} {run_id}", view=view)

    @app.get("/run", response_class=HTMLResponse)
    def run(request: Request, dag_id: str = "", run_id: str = "", user: Any = Depends(_user)) -> HTMLResponse:
        return _run_page(request, user, dag_id, run_id, None, None)

    @app.get("/task", response_class=HTMLResponse)
    def task(request: Request, dag_id: str = "", run_id: str = "", task_id: str = "",
             map_index: Optional[str] = None, user: Any = Depends(_user)) -> HTMLResponse:
        if not task_id:
            raise HTTPException(status_code=400, detail="task_id is required")
        return _run_page(request, user, dag_id, run_id, task_id, map_index)

    @app.get("/rotation", response_class=HTMLResponse)
    def rotation(request: Request, user: Any = Depends(_user)) -> HTMLResponse:
        if not access.can_read_rotation(user):
            raise HTTPException(status_code=403,
                                detail=f"the rotation page needs {access.ROTATION_PERMISSION}")
        rows = queries.rotation_rows(_runtime())
        return _page(request, "rotation.html", user, title="rotation", rows=rows,
                     permission=access.ROTATION_PERMISSION)

    return app
