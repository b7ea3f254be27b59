"""The Vault token kept in the runlease home across processes, attacked, on a real OpenBao.

A "process" here is a new :class:`VaultSession` (nothing in memory) on the same
home; one test runs real child processes through ``open_runtime``. Logins are
counted from the server's audit log. Every attack on the cache file must end in
exactly one fresh login (never an error, never a foreign token used) and never
put the token in a log line or an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from runlease.errors import StoreAccessDeniedError
from runlease.keys.crypto import Keyring, new_key
from runlease.models import SecretPath
from runlease.store.vault import VaultOptions, VaultStore
from runlease.store.vault_auth import VaultClientOptions, VaultSession
from runlease.store.vault_token_cache import VaultTokenCache
from store_support import vault_options
from support.openbao import OpenBao, unique

P = SecretPath.parse("dev/connections/warehouse")
DENIED = SecretPath.parse("dev/connections/denied")
CONN = {"conn_type": "postgres", "host": "db", "password": "tc-Pa55word"}  # runlease: allow secret-assignment (test fixture)
ALL_OF_SECRET = 'path "secret/*" { capabilities = ["create", "read", "update", "patch", "delete", "list"] }\n'


class Worker:
    """One AppRole, one home and its KEK: ``process()`` is a new process's store on them."""

    def __init__(self, bao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, policy: str = ALL_OF_SECRET,
                 address: str | None = None, **role: Any) -> None:
        self.bao = bao
        name = bao.policy(unique("tc"), policy)
        self.mount, self.role_id, self.secret_id = bao.approle([name], **role)
        monkeypatch.setenv("VAULT_SECRET_ID", self.secret_id)
        self.options = vault_options(bao, tmp_path, auth={"method": "approle", "role_id": self.role_id,
                                                           "mount": self.mount})
        if address:
            self.options["address"] = address
        self.home = tmp_path / "home"
        self.home.mkdir(mode=0o700, exist_ok=True)
        self.keyring = Keyring([new_key()])

    def process(self, *, keyring: Keyring | None = None, wall_clock: Callable[[], float] = time.time,
                **extra: Any) -> VaultStore:
        options = VaultOptions.model_validate({**self.options, **extra})
        connection = VaultClientOptions.model_validate(
            {k: v for k, v in options.model_dump().items() if k in VaultClientOptions.model_fields})
        store = VaultStore(options, session=VaultSession(connection, wall_clock=wall_clock))
        store.use_token_cache(self.home, keyring or self.keyring)
        return store

    def logins(self, mark: int) -> int:
        return len(self.bao.logins(mark, self.mount))

    def cache_file(self, store: VaultStore) -> Path:
        assert store.session.token_cache is not None
        return store.session.token_cache.path


def no_token_leaked(store: VaultStore, caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    token = store.session._client.token
    assert token
    for text in (caplog.text, *texts):
        assert token not in text


@pytest.fixture
def worker(openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    return Worker(openbao, tmp_path, monkeypatch)


def test_the_next_process_starts_with_the_cached_token(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = worker.process()
    mark = worker.bao.audit_mark()
    first.put(P, CONN)
    assert worker.logins(mark) == 1
    path = worker.cache_file(first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.parent == worker.home
    assert first.session._client.token not in path.read_text()  # sealed, not stored in the clear
    for _ in range(3):
        mark = worker.bao.audit_mark()
        later = worker.process()
        assert later.get(P).value == CONN
        assert worker.logins(mark) == 0 and later.session.logins == 0 and later.session.cached_tokens == 1
    assert not list(worker.home.glob("*.tmp"))
    no_token_leaked(first, caplog)


def test_it_can_be_turned_off(worker: Worker) -> None:
    first = worker.process(token_cache=False)
    first.put(P, CONN)
    assert not list(worker.home.iterdir())
    mark = worker.bao.audit_mark()
    assert worker.process(token_cache=False).get(P).value == CONN
    assert worker.logins(mark) == 1


def test_a_use_limited_token_is_never_cached(openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker(openbao, tmp_path, monkeypatch, token_num_uses=50)
    worker.process().put(P, CONN)
    assert not list(worker.home.glob("vault-token-*"))
    mark = openbao.audit_mark()
    assert worker.process().get(P).value == CONN
    assert worker.logins(mark) == 1


def test_the_token_auth_method_has_nothing_to_cache(openbao: OpenBao, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = VaultStore.from_options(vault_options(openbao, tmp_path))
    store.use_token_cache(home, Keyring([new_key()]))
    store.put(P, CONN)
    assert store.session.token_cache is None and not list(home.iterdir())


def test_a_revoked_cached_token_costs_exactly_one_login(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = worker.process()
    first.put(P, CONN)
    revoked = first.session._client.token
    worker.bao.client().auth.token.revoke(revoked)
    mark = worker.bao.audit_mark()
    later = worker.process()
    assert later.get(P).value == CONN  # the state read and the value read both met the dead token
    assert worker.logins(mark) == 1 and later.session.logins == 1 and later.session.denials == 0
    assert later.session._client.token != revoked
    mark = worker.bao.audit_mark()
    assert worker.process().get(P).value == CONN  # the fresh token replaced the dead one in the cache
    assert worker.logins(mark) == 0
    assert revoked not in caplog.text


def test_a_policy_denial_with_a_cached_token_is_not_a_login(openbao: OpenBao, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix for "every denied request costs a fresh login" holds for a token from the cache."""
    prefix = unique("rl")
    policy = ALL_OF_SECRET + "".join(
        f'path "secret/{family}/{prefix}/{sub}{DENIED}" {{ capabilities = ["deny"] }}\n'
        for family in ("data", "metadata") for sub in ("", "_state/"))
    worker = Worker(openbao, tmp_path, monkeypatch, policy=policy)
    worker.options["prefix"] = prefix
    worker.process().put(P, CONN)
    mark = openbao.audit_mark()
    later = worker.process()
    for _ in range(5):
        with pytest.raises(StoreAccessDeniedError):
            later.get(DENIED)
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 0 and later.session.logins == 0 and later.session.cached_tokens == 1


def test_an_expired_or_nearly_expired_token_is_not_used(openbao: OpenBao, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker(openbao, tmp_path, monkeypatch, token_ttl="600s", token_type="batch")  # not renewable
    for shift in (600 + 60, 600 - 2, 600 * 0.7):  # expired; 2 s left; past two thirds and not renewable
        for old in worker.home.glob("vault-token-*"):
            old.unlink()
        worker.process().put(P, CONN)  # a login now, cached with the real clock
        mark = openbao.audit_mark()
        later = worker.process(wall_clock=lambda shift=shift: time.time() + shift)
        assert later.get(P).value == CONN
        assert (shift, later.session.logins, later.session.cached_tokens) == (shift, 1, 0)
        assert worker.logins(mark) == 1


def test_a_renewable_token_past_two_thirds_is_renewed_not_replaced(openbao: OpenBao, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    worker = Worker(openbao, tmp_path, monkeypatch, token_ttl="600s", token_max_ttl="3600s")
    worker.process().put(P, CONN)
    mark = openbao.audit_mark()
    later = worker.process(wall_clock=lambda: time.time() + 450)
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 0 and later.session.renewals == 1
    assert [r["path"] for r in openbao.requests(mark)].count("auth/token/renew-self") == 1


# -- attacks on the file: each fails safe to exactly one fresh login ------------------------------


def _edit(path: Path) -> None:
    doc = json.loads(path.read_text())
    sealed = bytearray(__import__("base64").b64decode(doc["sealed"]))
    sealed[-5] ^= 0x01
    doc["sealed"] = __import__("base64").b64encode(bytes(sealed)).decode()
    path.write_text(json.dumps(doc))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _swap(path: Path) -> None:
    path.write_text(json.dumps({"format": "runlease-vault-token-cache/v1", "sealed": "AAAA" * 20}))


def _plain_token(path: Path) -> None:
    path.write_text(json.dumps({"token": "s.forged", "expires_at": None}))


def _group_readable(path: Path) -> None:
    path.chmod(0o640)


@pytest.mark.parametrize("attack", [_edit, _truncate, _swap, _plain_token, _group_readable],
                         ids=["edited", "truncated", "swapped", "plain-json", "group-readable"])
def test_a_tampered_file_means_one_fresh_login(worker: Worker, attack: Callable[[Path], None],
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    first = worker.process()
    first.put(P, CONN)
    path = worker.cache_file(first)
    attack(path)
    mark = worker.bao.audit_mark()
    later = worker.process()
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 1 and later.session.cached_tokens == 0
    assert later.session.token_cache is not None and later.session.token_cache.rejected == 1
    assert "Vault token" in caplog.text and str(path) in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # rewritten by the fresh login
    no_token_leaked(first, caplog)
    no_token_leaked(later, caplog)


def test_a_symlink_in_its_place_is_refused_and_replaced_not_followed(worker: Worker, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    first = worker.process()
    first.put(P, CONN)
    path = worker.cache_file(first)
    elsewhere = tmp_path / "valid-copy.cache"
    shutil.copy2(path, elsewhere)
    path.unlink()
    path.symlink_to(elsewhere)  # even a link to a perfectly valid file of ours is not followed
    before = elsewhere.read_bytes()
    mark = worker.bao.audit_mark()
    later = worker.process()
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 1 and later.session.cached_tokens == 0
    assert not path.is_symlink() and elsewhere.read_bytes() == before  # replaced; the target never written
    no_token_leaked(first, caplog)


def test_a_file_from_another_home_is_refused(worker: Worker, tmp_path: Path) -> None:
    """Same server and role, another home: its KEK differs, so the copied file does not authenticate."""
    other_home = worker.process(keyring=Keyring([new_key()]))
    other_home.put(P, CONN)
    path = worker.cache_file(other_home)
    assert path.exists()
    mark = worker.bao.audit_mark()
    later = worker.process()
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 1 and later.session.token_cache.rejected == 1  # type: ignore[union-attr]


def test_a_file_for_another_role_or_server_is_refused(openbao: OpenBao, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    a = Worker(openbao, tmp_path / "a", monkeypatch)
    a_store = a.process()
    a_store.put(P, CONN)
    # Another role in the same home: renaming role A's file to role B's name does not make it B's token.
    (tmp_path / "b").mkdir()
    b = Worker(openbao, tmp_path / "b", monkeypatch)
    b.home, b.keyring = a.home, a.keyring
    b.options["prefix"] = a.options["prefix"]
    b_store = b.process()
    shutil.copy2(a.cache_file(a_store), b.cache_file(b_store))
    mark = openbao.audit_mark()
    assert b_store.get(P).value == CONN
    assert b.logins(mark) == 1 and b_store.session.cached_tokens == 0
    assert b_store.session._client.token != a_store.session._client.token
    # The same role at another address (here: the same server by name): bound to the address, so refused.
    monkeypatch.setenv("VAULT_SECRET_ID", a.secret_id)
    by_name = Worker.__new__(Worker)
    by_name.__dict__.update(a.__dict__)
    by_name.options = {**a.options, "address": openbao.url.replace("127.0.0.1", "localhost")}
    elsewhere = by_name.process()
    shutil.copy2(a.cache_file(a_store), by_name.cache_file(elsewhere))
    mark = openbao.audit_mark()
    assert elsewhere.get(P).value == CONN
    assert a.logins(mark) == 1 and elsewhere.session.cached_tokens == 0


def test_a_rotated_secret_id_is_not_served_the_old_token(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    worker.process().put(P, CONN)
    new_secret_id = worker.bao.client().auth.approle.generate_secret_id(
        "runlease", mount_point=worker.mount)["data"]["secret_id"]
    monkeypatch.setenv("VAULT_SECRET_ID", new_secret_id)
    mark = worker.bao.audit_mark()
    later = worker.process()
    assert later.get(P).value == CONN
    assert worker.logins(mark) == 1 and later.session.cached_tokens == 0


# -- through the home, in real processes ----------------------------------------------------------

CHILD = """
import json, sys
from runlease.runtime import open_runtime
from runlease.settings import Settings
from runlease.models import SecretPath
rt = open_runtime(Settings())
store = rt.store
value = store.get(SecretPath.parse("dev/connections/warehouse")).value
print(json.dumps({"ok": value["host"] == "db", "logins": store.session.logins,
                  "cached": store.session.cached_tokens}))
rt.close()
"""


def test_task_processes_of_one_home_log_in_once(worker: Worker, tmp_path: Path) -> None:
    from runlease.runtime import init_home
    from runlease.settings import Settings

    home = tmp_path / "rlhome"
    env = {**os.environ, "RUNLEASE_HOME": str(home), "RUNLEASE_STORE": "vault",
           "RUNLEASE_STORE_OPTIONS": json.dumps(worker.options), "VAULT_SECRET_ID": worker.secret_id}
    settings = Settings(home=home, store="vault", store_options=worker.options)
    runtime, _ = init_home(settings)
    runtime.store.put(P, CONN)  # type: ignore[call-arg]
    runtime.close()
    mark = worker.bao.audit_mark()
    outputs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [o["ok"] for o in outputs] == [True] * 3
    # init_home ran before the home had a key to seal with: the first task logs in, the others do not.
    assert [(o["logins"], o["cached"]) for o in outputs] == [(1, 0), (0, 1), (0, 1)]
    assert worker.logins(mark) == 1
    [cache] = list(home.glob("vault-token-*.cache"))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert VaultTokenCache.__name__  # the module is the one documented in docs/stores.md
