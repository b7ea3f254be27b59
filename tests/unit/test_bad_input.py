"""Bad keys, broken files and malformed input: a clear error and nothing written."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from support.core import conn

from runlease.connection import parse_connection
from runlease.keys.crypto import new_key
from runlease.errors import (
    InvalidPathError,
    InvalidValueError,
    MasterKeyError,
    RunleaseError,
    StoreUnavailableError,
)
from runlease.keys.keyfile import create_key_file, encode_key
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity
from runlease.runtime import Runtime, init_home, open_runtime
from runlease.settings import Settings


def fingerprint(home: Path) -> dict[str, str | None]:
    """Hashes of the files a failed open must not change (the SHM index may be touched by any reader)."""
    out: dict[str, str | None] = {}
    for name in ("store.db", "store.db-wal", "audit.anchor", "master.key"):
        p = home / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() and p.stat().st_size else None
    return out


@pytest.fixture
def populated(runtime: Runtime, identity: RunIdentity, admin: RunIdentity) -> Runtime:
    runtime.broker.put("dev/connections/warehouse", conn("pw-populated-1"), admin)
    runtime.broker.lease("warehouse", identity)
    return runtime


@pytest.mark.parametrize("keep_open", [True, False], ids=["while-open", "after-close"])
def test_wrong_key_in_env_var_writes_nothing(populated: Runtime, monkeypatch: pytest.MonkeyPatch,
                                             keep_open: bool) -> None:
    home = populated.settings.home
    if not keep_open:
        populated.close()
    else:
        assert (home / "store.db-wal").stat().st_size > 0  # there is uncheckpointed data to protect
    before = fingerprint(home)
    wrong = encode_key(new_key())
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", wrong)
    for attempt in (lambda: open_runtime(Settings(home=home)), lambda: init_home(Settings(home=home))):
        with pytest.raises(MasterKeyError) as exc:
            attempt()
        message = str(exc.value)
        assert "does not match" in message and str(home / "store.db") in message
        assert wrong not in message
    assert fingerprint(home) == before


def test_wrong_key_file_writes_nothing(populated: Runtime, tmp_path: Path) -> None:
    settings = populated.settings
    populated.close()
    replacement = tmp_path / "other.key"
    create_key_file(replacement)
    os.replace(replacement, settings.key_file)
    before = fingerprint(settings.home)
    with pytest.raises(MasterKeyError, match="does not match"):
        open_runtime(settings)
    assert fingerprint(settings.home) == before


def test_store_refuses_a_foreign_keyring_at_construction(populated: Runtime) -> None:
    """The key check happens in LocalStore's constructor, before any write path exists,
    so nothing can seal data under a key the store was not initialized with."""
    from runlease.keys.crypto import Keyring
    from runlease.store.local import LocalStore

    with pytest.raises(MasterKeyError):
        LocalStore(populated.db, Keyring([new_key()]))
    assert populated.store.info(populated.broker.path("warehouse")).versions == 1


def test_missing_key_file(populated: Runtime) -> None:
    settings = populated.settings
    settings.key_file.unlink()
    with pytest.raises(MasterKeyError) as exc:
        open_runtime(settings)
    message = str(exc.value)
    assert str(settings.key_file) in message and "RUNLEASE_MASTER_KEY" in message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(populated: Runtime, mode: int) -> None:
    settings = populated.settings
    os.chmod(settings.key_file, mode)
    before = fingerprint(settings.home)
    with pytest.raises(MasterKeyError) as exc:
        open_runtime(settings)
    message = str(exc.value)
    assert f"chmod 600 {settings.key_file}" in message and f"{mode:04o}" in message
    assert fingerprint(settings.home) == before


@pytest.mark.parametrize(
    "content",
    ["", "not json", '{"keys": []}', '{"keys": [{"key": "!!!notbase64"}]}',
     json.dumps({"keys": [{"key": base64.b64encode(b"short").decode()}]}), '{"nokeys": 1}'],
)
def test_garbled_key_file(populated: Runtime, content: str) -> None:
    settings = populated.settings
    settings.key_file.write_text(content)
    with pytest.raises(MasterKeyError, match=str(settings.key_file)):
        open_runtime(settings)


@pytest.mark.parametrize("value", ["not base64 at all!", base64.b64encode(b"x" * 16).decode(), ",", " "])
def test_malformed_env_key(populated: Runtime, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", value)
    with pytest.raises(MasterKeyError, match="RUNLEASE_MASTER_KEY") as exc:
        open_runtime(Settings(home=populated.settings.home))
    if value.strip(", "):
        assert value not in str(exc.value)


def test_corrupted_db_header(populated: Runtime) -> None:
    settings = populated.settings
    populated.close()
    with open(settings.store_file, "r+b") as f:
        f.write(b"GARBAGE!" * 16)
    with pytest.raises(StoreUnavailableError) as exc:
        open_runtime(settings)
    message = str(exc.value)
    assert str(settings.store_file) in message and "not a usable runlease store" in message


def test_file_that_is_not_sqlite_at_all(runtime: Runtime) -> None:
    settings = runtime.settings
    runtime.close()
    settings.store_file.write_bytes(os.urandom(8192))
    for name in ("store.db-wal", "store.db-shm"):
        (settings.home / name).unlink(missing_ok=True)
    with pytest.raises(StoreUnavailableError, match="not a usable runlease store"):
        open_runtime(settings)


def test_sqlite_file_that_is_not_a_runlease_store(settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    create_key_file(settings.key_file)
    db = sqlite3.connect(settings.store_file)
    db.execute("CREATE TABLE unrelated(x)")
    db.commit()
    db.close()
    with pytest.raises(StoreUnavailableError, match="not a usable runlease store"):
        open_runtime(settings)


def test_missing_store(settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    create_key_file(settings.key_file)
    with pytest.raises(StoreUnavailableError, match="runlease init"):
        open_runtime(settings)
    assert not settings.store_file.exists()


def test_errors_carry_exit_codes() -> None:
    assert MasterKeyError("x").exit_code != StoreUnavailableError("x").exit_code
    assert all(issubclass(e, RunleaseError) for e in (MasterKeyError, StoreUnavailableError, InvalidPathError))


# --- malformed paths and values through the broker --------------------------------------


def _state(rt: Runtime) -> tuple[int, int, int]:
    versions = rt.db.connection().execute("SELECT count(*) FROM versions").fetchone()[0]
    return versions, len(list(rt.ledger.events(AuditQuery()))), len(rt.ledger.find_leases())


@pytest.mark.parametrize(
    ("ref", "names"),
    [
        ("prod/connection/warehouse", "kind 'connection'"),
        ("Prod/connections/warehouse", "environment 'Prod'"),
        ("prod/connections/ware house", "name 'ware house'"),
        ("connections/warehouse", "expected <environment>/<kind>/<name>"),
        ("prod/connections/warehouse/x", "expected <environment>/<kind>/<name>"),
    ],
)
def test_malformed_path_writes_nothing(populated: Runtime, identity: RunIdentity, admin: RunIdentity,
                                       ref: str, names: str) -> None:
    before = _state(populated)
    calls: list[Callable[[], object]] = [
        lambda: populated.broker.put(ref, conn("pw-never"), admin),
        lambda: populated.broker.lease(ref, identity),
        lambda: populated.broker.read(ref, admin),
        lambda: populated.broker.delete(ref, admin),
    ]
    for call in calls:
        with pytest.raises(InvalidPathError) as exc:
            call()
        assert names in str(exc.value)
    assert _state(populated) == before


@pytest.mark.parametrize(
    "text",
    [
        "postgres://etl:pw-never@db.example.com:99999/warehouse",  # runlease: allow connection-uri-credentials (test fixture)
        "warehouse-without-scheme pw-never",
        '{"conn_type": "postgres", "password": "pw-never", "port": "x"}',
        '{"conn_type": "postgres", "password": "pw-never"',
    ],
)
def test_malformed_connection_input_writes_nothing(populated: Runtime, admin: RunIdentity, text: str) -> None:
    before = _state(populated)
    with pytest.raises(InvalidValueError) as exc:
        populated.broker.put("dev/connections/new", parse_connection(text), admin)
    assert "pw-never" not in str(exc.value)
    assert _state(populated) == before
    assert [str(i.path) for i in populated.store.list(include_deleted=True)] == ["dev/connections/warehouse"]


@pytest.mark.parametrize("value", [42, None, b"bytes", ["list"]])
def test_unsupported_value_type_writes_nothing(populated: Runtime, admin: RunIdentity, value: object) -> None:
    before = _state(populated)
    with pytest.raises(InvalidValueError):
        populated.broker.put("dev/variables/x", value, admin)  # type: ignore[arg-type]
    assert _state(populated) == before
    assert populated.ledger.verify().ok


# --- the home itself -------------------------------------------------------------------------


def test_home_files_are_private(populated: Runtime) -> None:
    s = populated.settings
    assert s.home.stat().st_mode & 0o777 == 0o700
    assert s.key_file.stat().st_mode & 0o777 == 0o600
    assert s.anchor_file.stat().st_mode & 0o777 == 0o600


def test_init_home_again_reuses_the_existing_store(populated: Runtime) -> None:
    s = populated.settings
    key_before = s.key_file.read_bytes()
    again, created = init_home(s)
    try:
        assert created is False
        assert s.key_file.read_bytes() == key_before
        assert again.store.get(again.broker.path("warehouse")).value["password"] == "pw-populated-1"
        assert again.ledger.verify().ok
    finally:
        again.close()


def test_key_file_creation_never_replaces_an_existing_key(tmp_path: Path) -> None:
    from runlease.keys.keyfile import _write_atomic

    path = tmp_path / "master.key"
    create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(MasterKeyError, match="already exists"):
        create_key_file(path)
    # Even past the existence check (another process created it in between), the write is exclusive.
    with pytest.raises(MasterKeyError, match="already exists"):
        _write_atomic(path, [new_key()], exclusive=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]
