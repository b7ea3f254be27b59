"""No findings on real DAGs: Airflow's own example DAGs, dags_examples/, this repository."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from scan_support import REPO_ROOT

from runlease.scan import collect_targets, scan_targets
from runlease.scan.files import git_toplevel


def _airflow_example_dirs() -> list[Path]:
    """airflow/example_dags and every providers' example_dags, found without importing airflow."""
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI") == "true":
            pytest.fail("apache-airflow must be installed in CI to check its example DAGs")
        pytest.skip("apache-airflow is not installed: cannot check its example DAGs")
    dirs: list[Path] = []
    for location in spec.submodule_search_locations:
        base = Path(location)
        if (base / "example_dags").is_dir():
            dirs.append(base / "example_dags")
        providers = base / "providers"
        if providers.is_dir():
            dirs.extend(sorted(p for p in providers.rglob("example_dags") if p.is_dir()))
    return dirs


def _describe(findings) -> str:
    return "\n".join(f"{f.location} {f.rule_id}: {f.excerpt}" for f in findings)


def test_airflow_example_dags_are_clean() -> None:
    dirs = _airflow_example_dirs()
    assert any(d.parent.name == "airflow" for d in dirs), "airflow/example_dags not found"
    targets = collect_targets(dirs, all_files=True, cwd=Path.cwd())
    assert len([t for t in targets if t.path.suffix == ".py"]) >= 20
    result = scan_targets(targets)
    assert result.findings == [], _describe(result.findings)


def test_installed_airflow_package_has_at_most_two_findings() -> None:
    """The whole package (code, config templates, UI bundle, translations) is public:
    any finding there is a false positive. Issue #15 allows at most 2."""
    dirs = _airflow_example_dirs()
    package = next(d.parent for d in dirs if d.parent.name == "airflow")
    targets = collect_targets([package], all_files=True, cwd=Path.cwd())
    assert len(targets) > 1000
    result = scan_targets(targets, jobs=2)
    assert len(result.findings) <= 2, _describe(result.findings)


def test_dags_examples_are_clean() -> None:
    examples = REPO_ROOT / "dags_examples"
    if not examples.is_dir():
        pytest.skip("dags_examples/ does not exist in this checkout yet")
    result = scan_targets(collect_targets([examples], all_files=True, cwd=REPO_ROOT))
    assert result.findings == [], _describe(result.findings)


def test_this_repository_is_clean() -> None:
    if git_toplevel(REPO_ROOT) is None:
        pytest.skip("not a git checkout: nothing to scan as git sees it")
    result = scan_targets(collect_targets([REPO_ROOT], all_files=False, cwd=REPO_ROOT))
    assert result.stats.files_scanned > 10
    assert result.findings == [], _describe(result.findings)
