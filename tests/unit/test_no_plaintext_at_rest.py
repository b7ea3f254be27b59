"""No value, in any common encoding, is ever written to disk in the clear."""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path
from urllib.parse import quote

from support.core import conn

from runlease.models import RunIdentity, Stage
from runlease.runtime import Runtime
from runlease.settings import KEY_FILE_NAME

RNG = random.Random(1234)
ALPHABET = string.ascii_letters + string.digits + "!#$%&*+-=?@^_~"


def token(n: int) -> str:
    # Always mixed case and punctuation so a value cannot collide with hex chain values or lease ids.
    return "Q!" + "".join(RNG.choice(ALPHABET) for _ in range(n - 2))


SHORT = [token(6), token(7), "Zk#9!x"]
NON_ASCII = ["pässwörd-Ünïcødé-🔑-" + token(6), "密码-" + token(10)]
LONG = token(50_000)  # spans many SQLite pages


def forms(value: str) -> set[bytes]:
    """The value as bytes in every encoding an accidental write would plausibly use."""
    raw = value.encode()
    out = {
        raw,
        value.encode("utf-16-le"),
        json.dumps(value).encode(),  # \uXXXX escapes for non-ASCII
        quote(value, safe="").encode(),
        raw.hex().encode(),
    }
    for pad in range(3):  # base64 at each of the three byte alignments
        enc = base64.b64encode(b"\0" * pad + raw)
        core = enc[4:-4] if pad else enc
        if len(core) >= 8:
            out.add(core)
        out.add(base64.urlsafe_b64encode(raw))
    # For a long value, also look for any 64-byte window of it.
    if len(raw) > 256:
        out |= {raw[i:i + 64] for i in range(0, len(raw) - 64, 997)}
    return out


def files_to_scan(home: Path) -> list[Path]:
    return sorted(p for p in home.rglob("*") if p.is_file() and p.name != KEY_FILE_NAME)


def assert_no_plaintext(home: Path, values: list[str]) -> list[str]:
    scanned = []
    needles = {v: forms(v) for v in values}
    for path in files_to_scan(home):
        data = path.read_bytes()
        scanned.append(path.name)
        for value, encodings in needles.items():
            for needle in encodings:
                assert needle not in data, f"{path.name} holds a value ({len(value)} chars) in plaintext"
    return scanned


def test_no_plaintext_in_any_file(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> None:
    b = runtime.broker
    values: list[str] = []
    for i in range(25):
        pw, api_key = token(16 + i), token(32)
        b.put(f"dev/connections/db{i}", conn(pw, extra={"api_key": api_key, "region": "eu-west-1"}), admin)
        values += [pw, api_key]
    for i, v in enumerate(SHORT + NON_ASCII + [LONG]):
        b.put(f"dev/variables/v{i}", v, admin)
        values.append(v)
    for i in range(10):
        t = token(40)
        b.put(f"dev/tokens/t{i}", t, admin)
        values.append(t)
    rotated = token(20)
    b.put("dev/connections/db0", conn(rotated), admin, stage=Stage.PENDING)
    values.append(rotated)

    # Lease every one of them (cache, lease rows, audit events).
    for info in runtime.store.list():
        lease = b.lease(info.path, identity)
        assert lease.value == runtime.store.get(info.path).value
    b.lease("dev/connections/db0", identity, stage=Stage.PENDING)

    home = runtime.settings.home
    wal = runtime.settings.store_file.with_name("store.db-wal")
    assert wal.exists() and wal.stat().st_size > 0, "expected uncheckpointed pages in the WAL"
    scanned = assert_no_plaintext(home, values)
    assert {"store.db", "store.db-wal", "store.db-shm", "audit.anchor"} <= set(scanned)

    # Move everything from the WAL into the main file and scan again.
    busy, log, checkpointed = runtime.db.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert_no_plaintext(home, values)

    # And once every connection is closed (SQLite checkpoints and removes the WAL).
    runtime.close()
    assert_no_plaintext(home, values)
    assert runtime.settings.store_file.stat().st_size > len(LONG)  # the long value really is in there, sealed


def test_the_scan_would_catch_plaintext(tmp_path: Path) -> None:
    """Guard the guard: the same scan flags a file holding a value in any of its forms."""
    value = NON_ASCII[0]
    for i, encoded in enumerate(sorted(forms(value))):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "store.db").write_bytes(b"\x00" * 100 + encoded + b"\x00" * 100)
        try:
            assert_no_plaintext(d, [value])
        except AssertionError:
            continue
        raise AssertionError(f"scan missed encoding #{i}")
    # base64 at an odd alignment, embedded in a larger blob
    d = tmp_path / "b64"
    d.mkdir()
    (d / "blob").write_bytes(base64.b64encode(b"xy" + value.encode() + b"z"))
    try:
        assert_no_plaintext(d, [value])
    except AssertionError:
        return
    raise AssertionError("scan missed misaligned base64")
