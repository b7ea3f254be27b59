"""``runlease rotate`` and ``runlease rotation set|status|retire`` end to end on a temporary home."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runlease.cli.main import app
from runlease.rotation.policy import parse_duration
from runlease.errors import InvalidValueError

KEY = "rk_" + secrets.token_urlsafe(32)
PATH = "dev/tokens/serving_key"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    for name in ("RUNLEASE_MASTER_KEY", "RUNLEASE_STORE", "RUNLEASE_LEDGER", "RUNLEASE_POLICY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNLEASE_HOME", str(h))
    monkeypatch.setenv("COLUMNS", "200")
    assert run("init")[0] == 0
    assert run("put", PATH, "--stdin", input=KEY)[0] == 0
    return h


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    text = result.output
    try:
        err = result.stderr
    except ValueError:
        err = ""
    return result.exit_code, text + (err if err and err not in text else "")


def test_set_status_rotate_retire(home: Path) -> None:
    code, out = run("rotation", "set", PATH, "--rotator", "token", "--interval", "30d", "--grace", "1h",
                    "--owner", "ml-serving", "--setting", "prefix=rk_")
    assert code == 0 and "rotates with token every 30d, grace 1h" in out, out
    code, out = run("rotation", "status")
    assert code == 0 and PATH in out and "ml-serving" in out and "never rotated" in out and "in 29d 23h" in out
    code, out = run("rotate", PATH)
    assert code == 0 and "v2 is CURRENT, v1 is PREVIOUS" in out, out
    code, out = run("rotation", "status")
    assert "ok, PREVIOUS v1 in grace" in out and "retire in 59m" in out, out
    code, out = run("rotate", PATH)
    assert code == 5 and "grace period until" in out  # one credential in grace at a time
    code, out = run("rotation", "retire", PATH)
    assert code == 5 and "grace period until" in out
    code, out = run("rotation", "retire", PATH, "--force")
    assert code == 0 and "PREVIOUS v1 retired" in out
    code, out = run("rotation", "status")
    row = next(line for line in out.splitlines() if PATH in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][-2:] == ["in 29d 23h", "ok"]
    code, out = run("audit", "show", "--action", "rotate")
    assert code == 0 and "rotate" in out
    code, out = run("history", PATH)
    assert code == 0
    assert KEY not in "".join(run(c, *a)[1] for c, *a in (("rotation", "status"), ("ls",), ("audit", "export")))


def test_bad_policies_are_refused_before_anything_is_written(home: Path) -> None:
    code, out = run("rotation", "set", PATH, "--rotator", "nope", "--interval", "30d")
    assert code == 2 and "unknown rotator 'nope'" in out
    code, out = run("rotation", "set", PATH, "--rotator", "token", "--interval", "soon")
    assert code == 2 and "--interval 'soon' is not a duration" in out
    code, out = run("rotation", "set", PATH, "--rotator", "token", "--interval", "1d", "--setting", "password=x")
    assert code == 2 and "password: Extra inputs are not permitted" in out  # no credential slips in as a setting
    code, out = run("rotation", "set", PATH, "--rotator", "postgres", "--interval", "1d")
    assert code == 2 and "admin: Field required" in out
    code, out = run("rotate", PATH)
    assert code == 2 and "has no rotation policy" in out
    code, out = run("rotate", "dev/tokens/missing")
    assert code == 4 and "not found" in out


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200),
                                               ("30d", 2592000), ("2w", 1209600), (" 1H ", 3600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "--interval") == seconds


@pytest.mark.parametrize("text", ["", "1.5h", "-1d", "1y", "d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidValueError, match="is not a duration"):
        parse_duration(text, "--grace")
