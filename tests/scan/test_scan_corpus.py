"""Recall and redaction on the labeled corpus, in a real git repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scan_support import commit_all
from scan_corpus import generate_corpus, plant_values

from runlease.scan import collect_targets, scan_targets
from runlease.scan.rules import RULE_IDS


@pytest.fixture
def corpus_repo(git_repo: Path):
    labels = generate_corpus(git_repo, seed=7, copies=2)
    commit_all(git_repo, "corpus")
    return git_repo, labels


def test_every_planted_credential_is_found_with_its_rule(corpus_repo) -> None:
    repo, labels = corpus_repo
    result = scan_targets(collect_targets([], all_files=False, cwd=repo))
    got = {(f.path, f.line, f.rule_id) for f in result.findings}
    want = {(p.path, p.line, p.rule_id) for p in labels}
    assert want - got == set(), "planted credentials missed"
    assert got - want == set(), "findings on decoys (false positives)"


def test_corpus_covers_every_rule(corpus_repo) -> None:
    _repo, labels = corpus_repo
    assert {p.rule_id for p in labels} == set(RULE_IDS)


def test_no_output_format_contains_a_planted_value(corpus_repo, run_scan) -> None:
    repo, labels = corpus_repo
    values = plant_values(labels)
    outputs = []
    for fmt in ("table", "json", "sarif"):
        proc = run_scan("--format", fmt, cwd=repo)
        assert proc.returncode == 1, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    proc = run_scan("--write-baseline", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    outputs.append((repo / ".runlease-baseline.json").read_text())
    for output in outputs:
        for value in values:
            # Not the value, and not a distinctive chunk of it either.
            assert value not in output
            assert value[:12] not in output, f"value prefix leaked: {value[:4]}..."
    findings = json.loads(outputs[1])["findings"]
    assert findings and all("«redacted:" in f["excerpt"] or f["rule_id"] == "dotenv-file" for f in findings)
