"""KEK rotation: prepend a key, re-wrap every data key, payloads untouched, audit still verifies."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from support.core import conn, released_together

from runlease.keys.crypto import key_id, new_key
from runlease.errors import MasterKeyError
from runlease.keys.keyfile import encode_key, prepend_new_key
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.runtime import Runtime, init_home, open_runtime
from runlease.settings import Settings

PATHS = ["dev/connections/warehouse", "dev/tokens/api", "prod/variables/threshold"]


def populate(rt: Runtime, admin: RunIdentity, identity: RunIdentity) -> dict[tuple[str, int], object]:
    """Two versions of each path plus leases; returns every (path, version) -> value."""
    values: dict[tuple[str, int], object] = {}
    for p in PATHS:
        for v in (1, 2):
            value = conn(f"pw-{p}-{v}") if "/connections/" in p else f"value-{p}-{v}"
            assert rt.broker.put(p, value, admin) == v
            values[(p, v)] = value
        rt.broker.lease(p, identity)
    return values


def version_rows(rt: Runtime) -> dict[tuple[str, int], tuple[str, bytes, bytes]]:
    rows = rt.db.connection().execute("SELECT path, version, kek_id, wrapped_dek, ciphertext FROM versions")
    return {(p, v): (k, bytes(w), bytes(c)) for p, v, k, w, c in rows}


def assert_all_readable(rt: Runtime, values: dict[tuple[str, int], object]) -> None:
    for (p, v), value in values.items():
        assert rt.store.get(SecretPath.parse(p), version=v).value == value


def key_file_keys(settings: Settings) -> list[str]:
    return [entry["key"] for entry in json.loads(settings.key_file.read_text())["keys"]]


def test_rotate_with_key_file(runtime: Runtime, reopen: Callable[..., Runtime], admin: RunIdentity,
                              identity: RunIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    values = populate(runtime, admin, identity)
    old_id = runtime.keyring.active_id
    before = version_rows(runtime)
    assert {k for k, _, _ in before.values()} == {old_id}
    settings = runtime.settings
    runtime.close()

    ring = prepend_new_key(settings.key_file)
    new_id = ring.active_id
    assert ring.ids == [new_id, old_id]
    assert oct(settings.key_file.stat().st_mode & 0o777) == "0o600"

    rt = reopen()
    assert rt.keyring.active_id == new_id
    # Before re-wrapping: old versions are still readable (the old KEK is still loaded) ...
    assert_all_readable(rt, values)
    assert rt.broker.lease("dev/tokens/api", identity).value == values[("dev/tokens/api", 2)]
    # ... and new writes are sealed under the new KEK at once.
    values[("dev/tokens/api", 3)] = "value-after-rotation"
    rt.broker.put("dev/tokens/api", "value-after-rotation", admin)
    assert rt.store.kek_ids_in_use() == {old_id: len(before), new_id: 1}
    assert rt.ledger.audit_key_ids() == {old_id, new_id}

    # A keyring holding only the new key cannot unwrap what was not re-wrapped yet.
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", key_file_keys(settings)[0])
    only_new = open_runtime(Settings(home=settings.home))
    try:
        assert only_new.keyring.ids == [new_id]
        assert only_new.store.get(SecretPath.parse("dev/tokens/api")).value == "value-after-rotation"
        with pytest.raises(MasterKeyError, match=old_id):
            only_new.store.get(SecretPath.parse("dev/tokens/api"), version=1)
        with pytest.raises(MasterKeyError, match=old_id):
            only_new.broker.lease("dev/connections/warehouse", identity)
    finally:
        only_new.close()
    monkeypatch.delenv("RUNLEASE_MASTER_KEY")

    assert rt.store.rewrap_all() == len(before)
    assert rt.store.rewrap_all() == 0  # idempotent
    after = version_rows(rt)
    assert rt.store.kek_ids_in_use() == {new_id: len(after)}
    for ref, (kek, wrapped, ciphertext) in before.items():
        new_kek, new_wrapped, new_ciphertext = after[ref]
        assert new_kek == new_id and kek == old_id
        assert new_wrapped != wrapped
        assert new_ciphertext == ciphertext  # payload byte-identical
    assert_all_readable(rt, values)
    rt.broker.lease("dev/connections/warehouse", identity)

    # The audit chain spans events MAC'd with both keys and still verifies.
    assert rt.ledger.audit_key_ids() == {old_id, new_id}
    result = rt.ledger.verify()
    assert result.ok, result.describe()

    # After re-wrapping, the new key alone reads everything ...
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", key_file_keys(settings)[0])
    only_new = open_runtime(Settings(home=settings.home))
    try:
        assert_all_readable(only_new, values)
        # ... but events MAC'd with the retired key need it to be verified: keep old keys for audit.
        check = only_new.ledger.verify()
        assert not check.ok and check.first_bad_seq == 1 and "not loaded" in check.reason
    finally:
        only_new.close()


def test_only_new_key_before_anything_used_it_is_refused(runtime: Runtime, admin: RunIdentity,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runtime.broker.put("dev/tokens/api", "value-1", admin)
    settings = runtime.settings
    runtime.close()
    prepend_new_key(settings.key_file)
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", key_file_keys(settings)[0])
    with pytest.raises(MasterKeyError, match="does not match"):
        open_runtime(Settings(home=settings.home))


def test_rotate_with_env_var_keys(settings: Settings, monkeypatch: pytest.MonkeyPatch, admin: RunIdentity,
                                  identity: RunIdentity) -> None:
    old, new = encode_key(raw_old := new_key()), encode_key(raw_new := new_key())
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", old)
    rt, created = init_home(Settings(home=settings.home))
    assert created and not settings.key_file.exists()  # the key lives in the environment only
    values = populate(rt, admin, identity)
    before = version_rows(rt)
    rt.close()

    monkeypatch.setenv("RUNLEASE_MASTER_KEY", f"{new},{old}")
    rt = open_runtime(Settings(home=settings.home))
    try:
        assert rt.keyring.active_id == key_id(raw_new) and rt.keyring.ids == [key_id(raw_new), key_id(raw_old)]
        assert_all_readable(rt, values)  # before re-wrap, through the old key
        rt.broker.lease("dev/tokens/api", identity, stage=Stage.PREVIOUS)
        assert rt.store.rewrap_all() == len(before)
        after = version_rows(rt)
        assert {k for k, _, _ in after.values()} == {key_id(raw_new)}
        assert all(after[r][2] == before[r][2] and after[r][1] != before[r][1] for r in before)
        assert rt.ledger.verify().ok
        assert rt.ledger.audit_key_ids() == {key_id(raw_old), key_id(raw_new)}
    finally:
        rt.close()

    monkeypatch.setenv("RUNLEASE_MASTER_KEY", new)
    rt = open_runtime(Settings(home=settings.home))
    try:
        assert_all_readable(rt, values)
    finally:
        rt.close()


def test_env_key_with_whitespace_and_url_safe_alphabet(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                       admin: RunIdentity) -> None:
    import base64

    raw_old, raw_new = new_key(), new_key()
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", base64.urlsafe_b64encode(raw_old).decode().rstrip("="))
    rt, _ = init_home(Settings(home=settings.home))
    rt.broker.put("dev/tokens/api", "value-1", admin)
    rt.close()
    monkeypatch.setenv("RUNLEASE_MASTER_KEY", f" {encode_key(raw_new)} , {encode_key(raw_old)} ,")
    rt = open_runtime(Settings(home=settings.home))
    try:
        assert rt.keyring.ids == [key_id(raw_new), key_id(raw_old)]
        assert rt.store.get(SecretPath.parse("dev/tokens/api")).value == "value-1"
    finally:
        rt.close()


PREPEND_CODE = """
import sys, time
from pathlib import Path
from runlease.keys.keyfile import prepend_new_key
sync, key_file, i = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(sync / f"ready-{i}").touch()
while not (sync / "go").exists():
    time.sleep(0.001)
print(prepend_new_key(key_file).active_id)
"""


def test_concurrent_prepends_keep_every_new_key(runtime: Runtime, tmp_path) -> None:
    import sys

    from runlease.keys.keyfile import load_keyring

    settings = runtime.settings
    sync = tmp_path / "sync"
    sync.mkdir()
    argvs = [[sys.executable, "-c", PREPEND_CODE, str(sync), str(settings.key_file), str(i)] for i in range(4)]
    with released_together(argvs, sync) as procs:
        outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    new_ids = {out.strip() for out, _ in outputs}
    ids = load_keyring(settings).ids
    assert len(new_ids) == 4 and new_ids <= set(ids)  # no rotation lost its key
    assert ids[-1] == runtime.keyring.active_id and len(ids) == 5
