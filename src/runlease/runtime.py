"""Wire settings into a ready broker: the one place that knows which pieces go together.

Adapters (the Airflow backend, the KFP helper, the CLI) call
:func:`open_runtime` instead of assembling stores and ledgers themselves, so
a new store or ledger backend is added here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from runlease.broker import Broker
from runlease.crypto import Keyring
from runlease.db import Database
from runlease.errors import ConfigError
from runlease.issuers import standard_issuers
from runlease.keyfile import create_key_file, load_keyring
from runlease.ledger.base import Ledger
from runlease.ledger.sqlite import SqliteLedger
from runlease.policy import EXAMPLE_POLICY, Policy
from runlease.settings import Settings
from runlease.store.local import LocalStore


@dataclass
class Runtime:
    settings: Settings
    keyring: Keyring
    db: Database
    store: LocalStore
    ledger: Ledger
    policy: Policy
    broker: Broker

    def close(self) -> None:
        close_ledger = getattr(self.ledger, "close", None)
        if close_ledger is not None:
            close_ledger()
        self.db.close()


def open_ledger(settings: Settings, keyring: Keyring, db: Database, *, create: bool = False) -> Ledger:
    """The configured ledger: the store's SQLite file, or a shared PostgreSQL schema."""
    if settings.ledger == "postgres":
        from runlease.ledger.postgres import PostgresLedger

        assert settings.ledger_dsn is not None  # check_settings guarantees it
        return PostgresLedger.open(
            settings.ledger_dsn.get_secret_value(), keyring, schema=settings.ledger_schema,
            anchor_dir=settings.home, create=create,
        )
    return SqliteLedger(db, keyring, settings.anchor_file)


def _assemble(settings: Settings, keyring: Keyring, db: Database, store: LocalStore, *,
              create_ledger: bool = False) -> Runtime:
    policy = Policy.load(settings.effective_policy_file)
    ledger = open_ledger(settings, keyring, db, create=create_ledger)
    broker = Broker(
        store, ledger, policy=policy, default_env=settings.env,
        issuers=standard_issuers(lambda path: store.get(path)),
        default_ttl=timedelta(seconds=settings.default_ttl), max_ttl=timedelta(seconds=settings.max_ttl),
    )
    return Runtime(settings, keyring, db, store, ledger, policy, broker)


#: Store names this build can open. Adapters for central managers add theirs.
KNOWN_STORES: tuple[str, ...] = ("local",)
KNOWN_LEDGERS: tuple[str, ...] = ("local", "postgres")


def check_settings(settings: Settings) -> None:
    """Fail early, naming the setting, instead of half-opening something."""
    if settings.store not in KNOWN_STORES:
        raise ConfigError(f"unknown store {settings.store!r} (RUNLEASE_STORE): expected one of {', '.join(KNOWN_STORES)}")
    if settings.ledger not in KNOWN_LEDGERS:
        raise ConfigError(
            f"unknown ledger {settings.ledger!r} (RUNLEASE_LEDGER): expected one of {', '.join(KNOWN_LEDGERS)}"
        )
    if settings.ledger == "postgres" and settings.ledger_dsn is None:
        raise ConfigError("RUNLEASE_LEDGER=postgres needs RUNLEASE_LEDGER_DSN (a libpq DSN of the shared ledger)")


def open_runtime(settings: Settings | None = None, *, create_ledger: bool = False) -> Runtime:
    """Open an initialized home. Key problems raise before anything is written."""
    settings = settings or Settings()
    check_settings(settings)
    keyring = load_keyring(settings)
    db = Database(settings.store_file)
    try:
        store = LocalStore(db, keyring)
        return _assemble(settings, keyring, db, store, create_ledger=create_ledger)
    except BaseException:
        db.close()
        raise


def init_home(settings: Settings | None = None) -> tuple[Runtime, bool]:
    """Create the home (0700), key file (0600, unless the key comes from the environment),
    store and an example policy. Returns ``(runtime, created)``; an existing home is reused.
    """
    settings = settings or Settings()
    check_settings(settings)
    home: Path = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    if settings.store_file.exists():
        return open_runtime(settings, create_ledger=True), False
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
        return _assemble(settings, keyring, db, store, create_ledger=True), True
    except BaseException:
        db.close()
        raise
