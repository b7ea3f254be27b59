"""runlease in the Airflow UI, in a real browser: headless Chromium against a real ``airflow api-server``.

After real DAG runs on the executor path (LocalExecutor, each task its own
process; the DAG that is denied its connection runs with ``dag.test()`` in one
process, which records the same denial), a second API server -- with users and a per-DAG auth manager
(``ui_support/dag_scoped_auth_manager.py``) -- serves the Airflow UI and the
runlease pages. The browser signs in through Airflow's own login form, opens
the DAG run's "Credentials" tab and the runlease pages, and the tests assert
on what a user sees, that no leased value is anywhere in the page, and that
access follows Airflow's auth manager. ``RUNLEASE_UPDATE_SCREENSHOTS=1``
writes the screenshots to docs/img/ (otherwise to a temporary directory).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from conftest import (
    BIN,
    REPO,
    AirflowSite,
    DagRuns,
    _stop_group,
    _wait_for_health,
    free_port,
    run_dags,
)

CHROMIUM = Path("/usr/bin/chromium")
LEASE_ID = re.compile(r"\brl[0-9a-f]{24}\b")
EXECUTOR_UI_DAGS = ["training_pipeline", "rl_retry"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if os.environ.get("CI"):  # CI installs both (.ci/run, the dev extra): a missing one must fail, not skip
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (uses /usr/bin/chromium)")
if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI: /usr/bin/chromium is missing (.ci/run installs Debian's chromium)")
    pytest.skip("headless Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)


@dataclass
class UiSite:
    site: AirflowSite
    base: str
    passwords: dict[str, str]
    runs: DagRuns
    rotation_values: list[str]
    shots: Path

    def run_id(self, dag_id: str) -> str:
        return str(self.runs[dag_id]["run_id"])

    def needles(self) -> list[str]:
        return self.site.secrets.needles() + self.rotation_values

    def token(self, user: str) -> str:
        request = urllib.request.Request(
            f"{self.base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"username": user, "password": self.passwords[user]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["access_token"])

    def get(self, path: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
        """GET without following redirects; returns status, body and headers."""

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        request = urllib.request.Request(self.base + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as response:
                return response.status, response.read().decode(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), {k.lower(): v for k, v in err.headers.items()}


def _runlease(site: AirflowSite, *args: str) -> str:
    env = {**site.env, "RUNLEASE_HOME": str(site.runlease_home)}
    proc = subprocess.run([sys.executable, "-m", "runlease", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _stock_rotation(site: AirflowSite) -> list[str]:
    """Two token secrets with rotation policies: one rotated (PREVIOUS in grace), one overdue. Returns values."""
    values = ["rk_" + secrets.token_urlsafe(24), "pf_" + secrets.token_urlsafe(24)]
    site_env = {**site.env, "RUNLEASE_HOME": str(site.runlease_home)}
    for path, value in zip(("dev/tokens/ui_report_api", "dev/tokens/ui_partner_feed"), values):
        proc = subprocess.run([sys.executable, "-m", "runlease", "put", path, "--stdin"], input=value, env=site_env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    _runlease(site, "rotation", "set", "dev/tokens/ui_report_api", "--rotator", "token", "--interval", "30d",
              "--grace", "1h", "--owner", "ml-platform")
    _runlease(site, "rotate", "dev/tokens/ui_report_api")
    _runlease(site, "rotation", "set", "dev/tokens/ui_partner_feed", "--rotator", "token", "--interval", "1s",
              "--owner", "data-eng <oncall>")
    rotated = _runlease(site, "get", "dev/tokens/ui_report_api", "--reveal").strip()
    assert rotated and rotated not in values
    return values + [rotated]


@pytest.fixture(scope="module")
def ui(airflow_site: AirflowSite, api_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiSite]:
    runs = run_dags(airflow_site, EXECUTOR_UI_DAGS, executor=True)
    # The denied DAG fails at its first lookup; dag.test() in one process records the same denial, faster.
    denied = run_dags(airflow_site, ["untrusted_reporting"], executor=False)
    runs.results.update(denied.results)
    rotation_values = _stock_rotation(airflow_site)
    root = tmp_path_factory.mktemp("ui-server")
    passwords = {user: secrets.token_urlsafe(12) for user in ("admin", "operator", "viewer", "outsider")}
    (root / "passwords.json").write_text(json.dumps(passwords))
    port = free_port()
    env = {
        **airflow_site.env,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "ui_support"), airflow_site.env.get("PYTHONPATH", "")]),
        "AIRFLOW__CORE__AUTH_MANAGER": "dag_scoped_auth_manager.DagScopedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,operator:op,viewer:viewer,outsider:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "RUNLEASE_UI_TEST_DAG_DENIALS": json.dumps({"outsider": ["training_pipeline"]}),
    }
    log_file = root / "ui-api-server.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=airflow_site.root,
        )
    shots = REPO / "docs" / "img" if os.environ.get("RUNLEASE_UPDATE_SCREENSHOTS") else root / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        _wait_for_health(port, proc, log_file, deadline_s=180)
        yield UiSite(airflow_site, f"http://127.0.0.1:{port}", passwords, runs, rotation_values, shots)
    finally:
        _stop_group(proc)
        text = log_file.read_text(errors="replace")
        for needle in airflow_site.secrets.needles() + rotation_values:
            assert needle not in text, "a leased value reached the API server's log"


@pytest.fixture(scope="module")
def browser(ui: UiSite) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def signed_in(browser: Any, ui: UiSite, user: str, next_path: str) -> Any:
    """A new browser context signed in through Airflow's login form, at ``next_path``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(ui.base + next_path)
    page.wait_for_url("**/auth/login**", timeout=60_000)  # not signed in: sent to Airflow's login page
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(ui.passwords[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(ui.base + next_path, timeout=60_000)
    return page


def assert_no_value(html: str, ui: UiSite) -> None:
    for needle in ui.needles():
        assert needle not in html, "a secret value appears in the page"


def run_path(ui: UiSite, dag_id: str, **extra: str) -> str:
    return "/runlease/run?" + urlencode({"dag_id": dag_id, "run_id": ui.run_id(dag_id), **extra})


def test_run_page_in_the_browser(ui: UiSite, browser: Any) -> None:
    path = run_path(ui, "training_pipeline")
    page = signed_in(browser, ui, "admin", path)
    text = page.inner_text("body")
    assert ui.run_id("training_pipeline") in text
    assert "signed in as admin" in text
    # Every task of the run that leased something, with its try, and what it held.
    for task in ("extract_features try 1", "train_model try 1", "publish_model try 1"):
        assert task in text, text
    rows = page.locator("table.leases tr").all_inner_texts()
    lease_rows = [r for r in rows if "dev/" in r]
    assert lease_rows and all("revoked" in r and "task success" in r for r in lease_rows), rows
    assert any("dev/connections/warehouse" in r and "static" in r for r in lease_rows)
    assert any("dev/connections/model_registry" in r for r in lease_rows)
    assert "audit chain OK" in page.inner_text("#chain")
    events = page.locator("table.events tr").all_inner_texts()[1:]
    assert events and all(e.startswith("✓") for e in events)
    assert {"lease", "revoke"} <= {e.split("\t")[3] for e in events}
    assert "Nothing was denied." in text
    html = page.content()
    assert_no_value(html, ui)
    page.screenshot(path=str(ui.shots / "ui-run.png"), full_page=True)
    page.context.close()


def runlease_frame(page: Any, path: str, selector: str = "#chain") -> Any:
    """The iframe in which Airflow shows a runlease page, once it has loaded."""
    for _ in range(120):
        for frame in page.frames:
            if path in frame.url and frame.query_selector(selector) is not None:
                return frame
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame with {path}: {[f.url for f in page.frames]}")


def test_credentials_tab_on_the_airflow_dag_run_and_task_pages(ui: UiSite, browser: Any) -> None:
    run_id = ui.run_id("rl_retry")
    dag_run = f"/dags/rl_retry/runs/{quote(run_id, safe='')}"
    page = signed_in(browser, ui, "admin", dag_run)
    page.get_by_role("link", name="Credentials").click()
    page.wait_for_url("**/plugin/runlease-run")
    frame = runlease_frame(page, "/runlease/run?")
    text = frame.inner_text("body")
    assert run_id in text and "flaky try 1" in text and "flaky try 2" in text, text
    assert "task up_for_retry" in text and "task success" in text
    assert_no_value(page.content() + frame.content(), ui)
    page.screenshot(path=str(ui.shots / "ui-run-tab.png"))

    page.goto(ui.base + f"{dag_run}/tasks/flaky")
    page.get_by_role("link", name="Credentials").click()
    page.wait_for_url("**/plugin/runlease-task")
    frame = runlease_frame(page, "/runlease/task?")
    text = frame.inner_text("body")
    assert "Task flaky" in text and "flaky try 1" in text and "flaky try 2" in text, text
    assert_no_value(page.content() + frame.content(), ui)
    page.context.close()


def test_navigation_entries_in_the_airflow_ui(ui: UiSite, browser: Any) -> None:
    page = signed_in(browser, ui, "operator", "/dags")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Secret rotation").click()
    page.wait_for_url("**/plugin/runlease-rotation")
    frame = runlease_frame(page, "/runlease/rotation", "table.rotation")
    assert "dev/tokens/ui_report_api" in frame.inner_text("body")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="runlease", exact=True).click()
    page.wait_for_url("**/plugin/runlease")
    frame = runlease_frame(page, "/runlease/", "h1")
    assert ui.run_id("training_pipeline") in frame.inner_text("body")
    assert_no_value(page.content() + frame.content(), ui)
    page.context.close()


def test_nav_entries_and_tabs_are_registered(ui: UiSite) -> None:
    status, body, _ = ui.get("/api/v2/plugins", ui.token("admin"))
    assert status == 200, body
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "runlease"]
    views = {v["destination"]: v for v in plugin["external_views"] if v["name"] != "Secret rotation"}
    assert views["nav"]["href"] == "/runlease/"
    assert "{RUN_ID}" in views["dag_run"]["href"] and "{TASK_ID}" in views["task_instance"]["href"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/runlease"]


def test_task_page_shows_every_try_and_denials_are_listed(ui: UiSite) -> None:
    token = ui.token("viewer")
    status, html, headers = ui.get("/runlease/task?" + urlencode(
        {"dag_id": "rl_retry", "run_id": ui.run_id("rl_retry"), "task_id": "flaky", "map_index": "-1"}), token)
    assert status == 200, html
    assert "flaky try 1" in html and "flaky try 2" in html
    assert headers.get("cache-control") == "no-store"
    assert_no_value(html, ui)

    status, html, _ = ui.get(run_path(ui, "untrusted_reporting"), token)
    assert status == 200
    denials = html.split('<table class="denials">', 1)
    assert len(denials) == 2, "the denied lookup is listed"
    table = denials[1].split("</table>", 1)[0]
    assert "read_warehouse" in table and "dev/connections/warehouse" in table and "capability=lease" in table
    assert "No lease was issued to this run." in html
    assert_no_value(html, ui)


def test_rotation_page(ui: UiSite, browser: Any) -> None:
    page = signed_in(browser, ui, "operator", "/runlease/rotation")
    rows = {r.split("\t")[0]: r for r in page.locator("table.rotation tr").all_inner_texts()[1:]}
    report, feed = rows["dev/tokens/ui_report_api"], rows["dev/tokens/ui_partner_feed"]
    assert "ml-platform" in report and "grace" in report and "v1 until" in report and "v2" in report
    assert "data-eng <oncall>" in feed and "overdue" in feed and "never rotated" in feed
    # The picture: one bar per secret, the overdue one full and red.
    fills = page.locator("table.rotation .bar .fill")
    assert fills.count() >= 2
    overdue = page.locator("tr", has_text="dev/tokens/ui_partner_feed").locator(".fill")
    assert overdue.get_attribute("class") == "fill s-overdue"
    assert overdue.get_attribute("style") == "width: 100.0%"
    assert_no_value(page.content(), ui)
    page.screenshot(path=str(ui.shots / "ui-rotation.png"), full_page=True)
    page.context.close()


def test_access_follows_the_auth_manager(ui: UiSite) -> None:
    path = run_path(ui, "training_pipeline")
    # No token: the browser is sent to Airflow's login page, no data.
    status, body, headers = ui.get(path)
    assert status == 303 and "/auth/login" in headers["location"] and "dev/" not in body
    # A token signed with another key, and a garbled one: refused, no data.
    import jwt

    forged = jwt.encode({"sub": "admin", "role": "admin", "aud": "apache-airflow"}, "not-the-secret-" * 5,
                        algorithm="HS512")
    for bad in (forged, "garbage"):
        status, body, _ = ui.get(path, bad)
        assert status in (401, 403) and "dev/connections" not in body
    # outsider may not read training_pipeline: 403 on its run and task pages, and the index hides it.
    outsider = ui.token("outsider")
    for denied in (path, "/runlease/task?" + urlencode(
            {"dag_id": "training_pipeline", "run_id": ui.run_id("training_pipeline"), "task_id": "train_model"})):
        status, body, _ = ui.get(denied, outsider)
        assert status == 403 and "dev/connections" not in body and not LEASE_ID.search(body)
    status, body, _ = ui.get("/runlease/", outsider)
    assert status == 200 and ui.run_id("rl_retry") in body and "training_pipeline" not in body
    assert "you may not read" not in body  # not even a count of what is hidden
    status, body, _ = ui.get(run_path(ui, "rl_retry"), outsider)
    assert status == 200 and "flaky try 2" in body
    # The rotation page needs connection read: viewer refused, operator and admin allowed.
    status, body, _ = ui.get("/runlease/rotation", ui.token("viewer"))
    assert status == 403 and "ui_report_api" not in body
    for user in ("operator", "admin"):
        status, body, _ = ui.get("/runlease/rotation", ui.token(user))
        assert status == 200 and "ui_report_api" in body


def test_markup_in_ids_is_escaped(ui: UiSite) -> None:
    """A DAG author controls run ids and task ids: they are text in the page, never HTML."""
    site = ui.site
    evil_task = '<img src=x onerror="alert(1)">'
    _runlease(site, "lease", "dev/variables/api_token", "--orchestrator", "airflow", "--pipeline", "rl_retry",
              "--run-id", ui.run_id("rl_retry"), "--task-id", evil_task, "--try-number", "1")
    status, html, _ = ui.get(run_path(ui, "rl_retry"), ui.token("admin"))
    assert status == 200
    assert evil_task not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert_no_value(html, ui)


def test_docs_show_the_screenshots() -> None:
    doc = (REPO / "docs" / "airflow.md").read_text()
    for name in ("ui-run.png", "ui-rotation.png"):
        assert f"img/{name}" in doc and (REPO / "docs" / "img" / name).is_file()

