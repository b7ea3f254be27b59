"""Session-wide test plumbing shared by unit and integration tests.

Every test gets a fresh runlease home under ``tmp_path`` and an environment
without ``RUNLEASE_*`` variables, so a developer's own settings (or a key in
``RUNLEASE_MASTER_KEY``) can never leak into a test or be touched by one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

# Airflow (used only by the connection-compatibility test) reads AIRFLOW_HOME at
# import time and may create files there; keep it out of the user's home.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="runlease-tests-airflow-")
    os.environ["AIRFLOW_HOME"] = _airflow_home
    atexit.register(shutil.rmtree, _airflow_home, ignore_errors=True)

# No timing assertions: hypothesis' per-example deadline and its "too slow"
# health check would turn a busy machine into a failing test.
hypothesis.settings.register_profile(
    "runlease", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("runlease")

from runlease.models import RunIdentity  # noqa: E402
from runlease.runtime import Runtime, init_home, open_runtime  # noqa: E402
from runlease.settings import Settings  # noqa: E402

# Reusable fixtures for external systems the tests start themselves (tests/support/):
# a throwaway PostgreSQL server, moto's server, an OpenBao server, unreachable addresses.
pytest_plugins = ["support.postgres", "support.moto_server", "support.openbao", "support.unreachable"]


@pytest.fixture(autouse=True)
def _clean_runlease_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RUNLEASE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt, created = init_home(settings)
    assert created
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def reopen(settings: Settings) -> Iterator:
    """Open further runtimes on the same home (closed at teardown)."""
    opened: list[Runtime] = []

    def _open(s: Settings | None = None) -> Runtime:
        rt = open_runtime(s or settings)
        opened.append(rt)
        return rt

    yield _open
    for rt in opened:
        rt.close()


@pytest.fixture
def identity() -> RunIdentity:
    return RunIdentity(
        orchestrator="airflow", pipeline="training_daily", run_id="manual__2024-05-01", task_id="train",
        try_number=1, principal="svc-training",
    )


@pytest.fixture
def admin() -> RunIdentity:
    return RunIdentity(orchestrator="cli", pipeline="admin", principal="operator")
