"""Wire settings into a ready broker: the one place that knows which pieces go together.

Adapters (the Airflow backend, the KFP helper, the CLI) call
:func:`open_runtime` instead of assembling stores and ledgers themselves, so
a new store or ledger backend is added here once.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from runlease.broker import Broker
from runlease.crypto import Keyring
from runlease.db import Database
from runlease.keyfile import create_key_file, load_keyring
from runlease.ledger.sqlite import SqliteLedger
from runlease.policy import EXAMPLE_POLICY, Policy
from runlease.settings import Settings
from runlease.store.local import LocalStore


INIT_LOCK_NAME = "init.lock"


@dataclass
class Runtime:
    settings: Settings
    keyring: Keyring
    db: Database
    store: LocalStore
    ledger: SqliteLedger
    policy: Policy
    broker: Broker

    def close(self) -> None:
        self.db.close()


def _assemble(settings: Settings, keyring: Keyring, db: Database, store: LocalStore) -> Runtime:
    policy = Policy.load(settings.effective_policy_file)
    ledger = SqliteLedger(db, keyring, settings.anchor_file)
    broker = Broker(
        store, ledger, policy=policy, default_env=settings.env,
        default_ttl=timedelta(seconds=settings.default_ttl), max_ttl=timedelta(seconds=settings.max_ttl),
    )
    return Runtime(settings, keyring, db, store, ledger, policy, broker)


def open_runtime(settings: Settings | None = None) -> Runtime:
    """Open an initialized home. Key problems raise before anything is written."""
    settings = settings or Settings()
    keyring = load_keyring(settings)
    db = Database(settings.store_file)
    try:
        store = LocalStore(db, keyring)
        return _assemble(settings, keyring, db, store)
    except BaseException:
        db.close()
        raise


def init_home(settings: Settings | None = None) -> tuple[Runtime, bool]:
    """Create the home (0700), key file (0600, unless the key comes from the environment),
    store and an example policy. Returns ``(runtime, created)``; an existing home is reused.
    """
    settings = settings or Settings()
    home: Path = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    # Concurrent inits (e.g. several workers starting at once) must not each create a
    # key and a schema: one initializes, the others wait and then open what it made.
    lock_fd = os.open(home / INIT_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return _init_locked(settings, home)
    finally:
        os.close(lock_fd)


def _init_locked(settings: Settings, home: Path) -> tuple[Runtime, bool]:
    if settings.store_file.exists():
        return open_runtime(settings), False
    if settings.master_key is None and not settings.key_file.exists():
        keyring = create_key_file(settings.key_file)
    else:
        keyring = load_keyring(settings)
    db = Database(settings.store_file, create=True)
    try:
        store = LocalStore.initialize(db, keyring)
        example = home / "policy.example.toml"
        if not example.exists():
            example.write_text(EXAMPLE_POLICY)
        return _assemble(settings, keyring, db, store), True
    except BaseException:
        db.close()
        raise
