"""Fixtures for the scanner tests: real git repositories in temporary directories."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity; return stdout."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Scan Test",
        "GIT_AUTHOR_EMAIL": "scan@example.invalid",
        "GIT_COMMITTER_NAME": "Scan Test",
        "GIT_COMMITTER_EMAIL": "scan@example.invalid",
    }
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """An empty git repository (``git init``) to fill and commit in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "commit.gpgsign", "false")
    return repo


def commit_all(repo: Path, message: str) -> str:
    """Stage everything and commit; return the new commit's hash."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


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
