"""Fixtures for the scanner tests: real git repositories in temporary directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scan_support import REPO_ROOT, git


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """An empty git repository (``git init``) to fill and commit in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "commit.gpgsign", "false")
    return repo


@pytest.fixture
def run_scan() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m runlease.scan`` for real, in ``cwd``; returns the completed process."""

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "200"}
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return subprocess.run(
            [sys.executable, "-m", "runlease.scan", *args], cwd=cwd, capture_output=True, text=True, env=env
        )

    return run
