"""The PostgreSQL fixture skips locally but fails in CI when the server binaries are missing."""

from __future__ import annotations

import pytest

from support import postgres


def test_missing_binaries_skip_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_bindir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install Debian's `postgresql` package"):
        postgres.require_bindir()


def test_missing_binaries_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "find_bindir", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL server binaries not found"):
        postgres.require_bindir()


def test_installed_binaries_are_found() -> None:
    bindir = postgres.find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL installed here")
    assert (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()
