"""Secret scanning for DAG and pipeline code (``runlease scan``).

Parses code with :mod:`ast` and never imports Airflow or KFP. Entry points:
:func:`scan_text` for one file's text, :func:`scan_targets` with
:func:`collect_targets` for a tree, :func:`scan_history` for git history.
"""

from .engine import ScanResult, ScanStats, apply_baseline, scan_targets, scan_text
from .files import ScanTarget, ScanUsageError, collect_targets
from .history import scan_history
from .models import Finding
from .rules import RULE_IDS, RULES, Rule, Severity

__all__ = [
    "RULES",
    "RULE_IDS",
    "Finding",
    "Rule",
    "ScanResult",
    "ScanStats",
    "ScanTarget",
    "ScanUsageError",
    "Severity",
    "apply_baseline",
    "collect_targets",
    "scan_history",
    "scan_targets",
    "scan_text",
]
