"""Tampering with the audit log directly in SQLite must be detected at the right event."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.core import conn

from runlease.audit.chain import Anchor, read_anchor, write_anchor
from runlease.keys.crypto import Keyring, new_key
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, Stage
from runlease.runtime import Runtime

SECRET_VALUES = ["pw-warehouse-Zq81xk", "pw-warehouse-rotated-Lm02", "tok-api-77c1f0d2e3", "variable-value-Kp3"]


@pytest.fixture
def rt(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> Runtime:
    """A log with 10 events; seq 4..7 are leases carrying run ids, paths and details."""
    b = runtime.broker
    b.put("dev/connections/warehouse", conn(SECRET_VALUES[0]), admin)  # 1
    b.put("dev/tokens/api", SECRET_VALUES[2], admin)  # 2
    b.put("dev/variables/batch", SECRET_VALUES[3], admin)  # 3
    leases = [b.lease("warehouse", identity), b.lease("dev/tokens/api", identity),  # 4, 5
              b.lease("dev/variables/batch", identity), b.lease("warehouse", identity)]  # 6, 7
    b.put("dev/connections/warehouse", conn(SECRET_VALUES[1]), admin, stage=Stage.PENDING)  # 8
    b.read("dev/connections/warehouse", admin, stage=Stage.PENDING)  # 9
    b.revoke(leases[0].lease_id)  # 10
    assert count(runtime) == 10
    return runtime


def count(rt: Runtime) -> int:
    return len(list(rt.ledger.events(AuditQuery())))


@contextmanager
def raw(rt: Runtime) -> Iterator[sqlite3.Connection]:
    """An independent SQLite connection: what someone with file access (and no KEK) can do."""
    db = sqlite3.connect(rt.settings.store_file, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


def assert_broken_at(rt: Runtime, seq: int) -> None:
    result = rt.ledger.verify()
    assert not result.ok, "tampering went undetected"
    assert result.first_bad_seq == seq, result.describe()
    assert f"seq {seq}" in result.describe()


def test_untouched_log_verifies(rt: Runtime) -> None:
    result = rt.ledger.verify()
    assert result.ok and result.checked == 10 and result.first_bad_seq is None
    assert "10 events verified" in result.describe()
    assert read_anchor(rt.settings.anchor_file, rt.ledger.anchor_signer).seq == 10


def test_empty_log_verifies(runtime: Runtime) -> None:
    assert runtime.ledger.verify().ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "read"),
        ("path", "dev/connections/other"),
        ("run_id", "someone-elses-run"),
        ("detail", '{"issuer":"static","stage":"CURRENT","ttl_s":1}'),
        ("ts", "2020-01-01T00:00:00Z"),
        ("outcome", "denied"),
        ("principal", "svc-innocent"),
        ("version", 2),
        ("lease_id", "rl000000000000000000000000"),
        ("key_id", "kek-0000000000000000"),
        ("chain", "00" * 32),
    ],
)
def test_edited_column_is_detected_at_that_event(rt: Runtime, column: str, value: object) -> None:
    with raw(rt) as db:
        assert db.execute(f"SELECT {column} FROM audit WHERE seq=5").fetchone()[0] != value
        db.execute(f"UPDATE audit SET {column}=? WHERE seq=5", (value,))
    assert_broken_at(rt, 5)


def test_edit_that_keeps_the_json_meaning_is_still_detected(rt: Runtime) -> None:
    with raw(rt) as db:
        detail = db.execute("SELECT detail FROM audit WHERE seq=6").fetchone()[0]
        db.execute("UPDATE audit SET detail=? WHERE seq=6", (json.dumps(json.loads(detail), indent=1),))
    assert_broken_at(rt, 6)


def test_deleted_middle_row(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("DELETE FROM audit WHERE seq=6")
    assert_broken_at(rt, 6)
    assert "missing" in rt.ledger.verify().reason


def test_deleted_middle_row_with_renumbering(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("DELETE FROM audit WHERE seq=6")
        for seq in range(7, 11):
            db.execute("UPDATE audit SET seq=? WHERE seq=?", (seq - 1, seq))
    assert_broken_at(rt, 6)


def test_deleted_first_row(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("DELETE FROM audit WHERE seq=1")
    assert_broken_at(rt, 1)


def test_swapped_rows_are_detected(rt: Runtime) -> None:
    columns = [r[1] for r in sqlite3.connect(rt.settings.store_file).execute("PRAGMA table_info(audit)")]
    content = [c for c in columns if c != "seq"]
    with raw(rt) as db:
        a = db.execute(f"SELECT {','.join(content)} FROM audit WHERE seq=4").fetchone()
        b = db.execute(f"SELECT {','.join(content)} FROM audit WHERE seq=7").fetchone()
        assignments = ",".join(f"{c}=?" for c in content)
        db.execute(f"UPDATE audit SET {assignments} WHERE seq=4", b)
        db.execute(f"UPDATE audit SET {assignments} WHERE seq=7", a)
    assert_broken_at(rt, 4)


def test_truncated_tail_is_caught_by_the_anchor(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("DELETE FROM audit WHERE seq > 7")
    assert_broken_at(rt, 8)
    result = rt.ledger.verify()
    assert "truncated" in result.reason and "10" in result.reason
    # It is the anchor, outside the database, that catches it: the shorter chain itself is valid,
    # and deleting the anchor as well does not help (issue #12): a store with events needs one.
    rt.settings.anchor_file.unlink()
    result = rt.ledger.verify()
    assert not result.ok and "anchor is missing or empty" in result.reason


def test_truncated_to_empty(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("DELETE FROM audit")
    assert_broken_at(rt, 1)


def test_documented_limitation_tail_and_anchor_rewritten_together_is_not_detected(
        rt: Runtime, identity: RunIdentity) -> None:
    """runlease.audit.chain's docstring: an attacker who can write both the database and the anchor file
    can drop the newest events and roll the anchor back to an older, genuine (seq, chain).
    Only an anchor they cannot write (a remote sink) catches that. This test pins the
    limitation so that a fix is noticed (and this test updated) rather than assumed."""
    genuine_older = rt.settings.anchor_file.read_bytes()  # the attacker copies the signed file ...
    assert read_anchor(rt.settings.anchor_file, rt.ledger.anchor_signer).seq == 10
    rt.broker.lease("warehouse", identity)  # 11
    rt.broker.lease("warehouse", identity)  # 12
    with raw(rt) as db:
        db.execute("DELETE FROM audit WHERE seq > 10")
    rt.settings.anchor_file.write_bytes(genuine_older)  # ... and puts it back with the cut
    result = rt.ledger.verify()
    assert result.ok and result.checked == 10  # NOT detected: the documented limitation


def test_forged_anchor_is_detected(rt: Runtime) -> None:
    signer = rt.ledger.anchor_signer
    write_anchor(rt.settings.anchor_file, Anchor(10, "ab" * 32), signer)  # signed, made-up chain
    assert_broken_at(rt, 10)
    write_anchor(rt.settings.anchor_file, Anchor(4, "ab" * 32), signer)  # older seq, made-up chain
    assert_broken_at(rt, 4)


def _unsigned(seq: int, chain: str) -> bytes:
    """What an attacker without the key can write: the pre-#12 anchor format, check and all."""
    import hashlib

    check = hashlib.sha256(f"runlease-anchor|{seq}|{chain}".encode()).hexdigest()[:16]
    return json.dumps({"seq": seq, "chain": chain, "check": check}).encode().ljust(191) + b"\n"


@pytest.mark.parametrize("attack", ["delete", "empty", "seq0-unsigned", "tip-unsigned", "resigned-by-other-key",
                                    "symlink"])
def test_anchor_attacks_fail_verification_when_the_log_was_emptied(rt: Runtime, attack: str,
                                                                   tmp_path: Path) -> None:
    """Issue #12: with every event deleted and the anchor deleted, emptied or replaced by one
    without a valid signature, `audit verify` said "OK: 0 events" while versions and leases existed."""
    anchor = rt.settings.anchor_file
    tip = read_anchor(anchor, rt.ledger.anchor_signer)
    if attack != "tip-unsigned":
        with raw(rt) as db:
            db.execute("DELETE FROM audit")
    if attack == "delete":
        anchor.unlink()
    elif attack == "empty":
        anchor.write_bytes(b"")
    elif attack == "seq0-unsigned":
        anchor.write_bytes(_unsigned(0, ""))
    elif attack == "tip-unsigned":
        anchor.write_bytes(_unsigned(tip.seq, tip.chain))
    elif attack == "resigned-by-other-key":
        from runlease.audit.chain import AnchorSigner

        write_anchor(anchor, Anchor(0, ""), AnchorSigner(Keyring([new_key()]), rt.ledger.anchor_signer.scope))
    elif attack == "symlink":
        elsewhere = tmp_path / "elsewhere.anchor"
        elsewhere.write_bytes(anchor.read_bytes())
        anchor.unlink()
        anchor.symlink_to(elsewhere)
    result = rt.ledger.verify()
    assert not result.ok, attack
    assert "anchor" in result.reason


def test_an_older_genuine_anchor_alone_fails_verification(rt: Runtime, identity: RunIdentity) -> None:
    older = rt.settings.anchor_file.read_bytes()
    rt.broker.lease("warehouse", identity)
    rt.settings.anchor_file.write_bytes(older)
    result = rt.ledger.verify()
    assert not result.ok and "older than the log" in result.reason
    # The next event does not quietly cover it up ...
    rt.broker.lease("warehouse", identity)
    assert not rt.ledger.verify().ok
    # ... re-anchoring is a deliberate, audited step.
    old, new = rt.ledger.reanchor()
    assert old is not None and old.seq == 10 and new.seq == 13
    assert rt.ledger.verify().ok
    [event] = list(rt.ledger.events(AuditQuery(action="audit_reanchor")))
    assert event.detail["previous_anchor_seq"] == 10


def test_a_store_with_nothing_in_it_needs_no_anchor(runtime: Runtime) -> None:
    runtime.settings.anchor_file.unlink(missing_ok=True)
    assert runtime.ledger.verify().ok


def test_cli_audit_verify_exits_7_on_a_missing_anchor(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from runlease.cli.main import app

    monkeypatch.setenv("RUNLEASE_HOME", str(rt.settings.home))
    rt.settings.anchor_file.unlink()
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 7 and "anchor is missing" in result.output
    result = CliRunner().invoke(app, ["audit", "verify", "--reanchor"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0


def test_unreadable_anchor_fails_verification(rt: Runtime) -> None:
    rt.settings.anchor_file.write_text("not json")
    result = rt.ledger.verify()
    assert not result.ok and "anchor" in result.reason


def test_appended_forgery_without_the_key_is_detected(rt: Runtime) -> None:
    with raw(rt) as db:
        row = list(db.execute("SELECT * FROM audit WHERE seq=10").fetchone())
        row[0] = 11
        db.execute(f"INSERT INTO audit VALUES ({','.join('?' * len(row))})", row)
    assert_broken_at(rt, 11)


def test_event_signed_with_an_unknown_key_is_reported(rt: Runtime) -> None:
    rt.ledger.keyring = Keyring([new_key()])
    result = rt.ledger.verify()
    assert not result.ok and result.first_bad_seq == 1 and "not loaded" in result.reason


def test_log_cannot_be_transplanted_to_another_store(rt: Runtime) -> None:
    with raw(rt) as db:
        db.execute("UPDATE meta SET value='00000000-0000-0000-0000-000000000000' WHERE key='store_id'")
    rt.ledger.store_id = "00000000-0000-0000-0000-000000000000"
    assert_broken_at(rt, 1)


def test_events_after_tampering_keep_chaining(rt: Runtime, identity: RunIdentity) -> None:
    """Appends continue from the stored tail; verify still points at the original damage."""
    with raw(rt) as db:
        db.execute("UPDATE audit SET run_id='x' WHERE seq=3")
    rt.broker.lease("warehouse", identity)
    assert_broken_at(rt, 3)


def test_no_event_contains_a_secret_value(rt: Runtime) -> None:
    forms = set()
    for value in SECRET_VALUES:
        forms |= {value, json.dumps(value)[1:-1], base64.b64encode(value.encode()).decode()}
    db = sqlite3.connect(rt.settings.store_file)
    columns = [r[1] for r in db.execute("PRAGMA table_info(audit)")]
    rows = db.execute(f"SELECT {','.join(f'CAST({c} AS TEXT)' for c in columns)} FROM audit").fetchall()
    assert len(rows) == 10
    for row in rows:
        for cell in row:
            for form in forms:
                assert form not in (cell or ""), "a secret value reached the audit log"
    for event in rt.ledger.events(AuditQuery()):
        dumped = event.model_dump_json()
        assert not any(form in dumped for form in forms)


def test_an_anchor_edited_after_this_process_wrote_it_is_still_checked(rt: Runtime, admin: RunIdentity) -> None:
    """The ledger skips re-checking the anchor only when its bytes are exactly the record it just
    signed; an edit in place between two events (same length, old MAC) must not ride on that."""
    path = rt.settings.anchor_file
    record = path.read_bytes()
    assert b'"seq": 10,' in record
    path.write_bytes(record.replace(b'"seq": 10,', b'"seq": 99,'))  # made-up seq, the genuine MAC kept
    rt.broker.put("dev/variables/after_edit", "v-after-edit-Tq5", admin)  # event 11: must not cover it up
    assert read_anchor(path, rt.ledger.anchor_signer).problem  # the edit is still there, found out
    result = rt.ledger.verify()
    assert not result.ok, "an edited anchor went undetected"
