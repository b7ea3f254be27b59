"""Helpers shared by the scanner tests (a uniquely named module: several test
folders have a conftest.py, so ``from conftest import`` would pick the wrong one)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def commit_all(repo: Path, message: str) -> str:
    """Stage everything and commit; return the new commit's hash."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()
