"""Wire settings into a ready broker: the one place that knows which pieces go together.

Adapters (the Airflow backend, the KFP helper, the CLI) call
:func:`open_runtime` instead of assembling stores and ledgers themselves, so
a new store or ledger backend is added here once.

With a remote store (``RUNLEASE_STORE=vault|aws``) values live in the central
manager, but the home stays: its SQLite file holds the ledger (leases and the
audit chain, HMAC'd with a key derived from the local KEK), and its
:class:`LocalStore` -- empty of secrets -- still proves at open that the
loaded KEK is the one the ledger was sealed with. ``runlease init`` therefore
probes the remote store first (address, credentials, permissions; nothing is
written if that fails) and then creates the same home as for the local
store: key file (plain or KMS-wrapped), ledger database, example policy.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from runlease.audit.chain import VerifyResult
from runlease.broker import Broker
from runlease.keys.crypto import Keyring
from runlease.clients.db import Database
from runlease.errors import ConfigError
from runlease.integrity.home_guard import UnsafeHomeError, check_file, check_home
from runlease.issuers import standard_issuers
from runlease.keys.keyfile import (
    create_key_file,
    create_kms_key_file,
    create_transit_key_file,
    kms_key_file_info,
    load_keyring,
    transit_key_file_info,
)
from runlease.ledger.base import Ledger
from runlease.ledger.sqlite import SqliteLedger
from runlease.integrity.format_record import store_record_path
from runlease.integrity.secret_state import secret_state_path
from runlease.integrity.migrations import record_format, upgrade_sqlite
from runlease.policy.grants import EXAMPLE_POLICY, Policy
from runlease.settings import Settings
from runlease.store.base import SecretStore
from runlease.store.local import LocalStore

if TYPE_CHECKING:
    from runlease.keys.kms import KmsKeyOptions
    from runlease.keys.vault_transit import TransitKeyOptions


INIT_LOCK_NAME = "init.lock"


@dataclass
class Runtime:
    settings: Settings
    keyring: Keyring
    db: Database
    store: SecretStore
    ledger: Ledger
    policy: Policy
    broker: Broker
    #: The home's own store over ``db``: the secret store itself when ``store`` is
    #: local; otherwise empty of secrets, kept for the KEK check and re-wrapping.
    local: LocalStore

    def verify_audit(self) -> tuple[VerifyResult, str]:
        """The audit chain with its signed anchor, then (only if that holds) the home's secret rows
        against their signed state record: ``(chain result, "" or why the rows look rolled back)``.
        One place for what ``runlease audit verify`` and the server's ``/v1/audit/verify`` check."""
        result = self.ledger.verify()
        return result, (self.local.check_secret_state() if result.ok else "")

    def close(self) -> None:
        close_ledger = getattr(self.ledger, "close", None)
        if close_ledger is not None:
            close_ledger()
        self.db.close()


def open_ledger(settings: Settings, keyring: Keyring, db: Database, *, create: bool = False) -> Ledger:
    """The configured ledger: the home's SQLite file, or a shared PostgreSQL schema."""
    if settings.ledger == "postgres":
        from runlease.ledger.postgres import PostgresLedger

        assert settings.ledger_dsn is not None  # check_settings guarantees it
        return PostgresLedger.open(
            settings.ledger_dsn.get_secret_value(), keyring, schema=settings.ledger_schema,
            anchor_dir=settings.home, create=create,
        )
    return SqliteLedger(db, keyring, settings.anchor_file)


def _assemble(settings: Settings, keyring: Keyring, db: Database, store: SecretStore, local: LocalStore, *,
              create_ledger: bool = False) -> Runtime:
    policy = Policy.load(settings.effective_policy_file)
    ledger = open_ledger(settings, keyring, db, create=create_ledger)
    broker = Broker(
        store, ledger, policy=policy, default_env=settings.env,
        issuers=standard_issuers(lambda path: store.get(path)),
        default_ttl=timedelta(seconds=settings.default_ttl), max_ttl=timedelta(seconds=settings.max_ttl),
        max_value_bytes=settings.max_value_bytes,
    )
    return Runtime(settings, keyring, db, store, ledger, policy, broker, local)


#: Store names this build can open. Adapters for central managers add theirs.
KNOWN_STORES: tuple[str, ...] = ("local", "vault", "aws")
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


def remote_store(settings: Settings, keyring: Keyring | None = None) -> SecretStore | None:
    """The configured central manager (SDK imported only now), or None for the local store.

    ``keyring``: the open home's KEKs. With it, the Vault store keeps its login
    token in the home, sealed under the KEK, for the next process (store option
    ``token_cache``, on by default; see runlease.store.vault_token_cache).
    """
    if settings.store == "vault":
        from runlease.store.vault import VaultStore

        vault = VaultStore.from_options(settings.store_options)
        if keyring is not None:
            vault.use_token_cache(settings.home, keyring)
        return vault
    if settings.store == "aws":
        from runlease.store.aws import AwsSecretsStore

        return AwsSecretsStore.from_options(settings.store_options)
    return None


def open_runtime(settings: Settings | None = None, *, create_ledger: bool = False) -> Runtime:
    """Open an initialized home. Key problems raise before anything is written.

    With ``RUNLEASE_SERVER`` set, no home is opened: the result is a
    :class:`runlease.remote.runtime.RemoteRuntime` whose ``broker`` and
    ``ledger`` talk to ``runlease serve`` (same methods for what a client may do).
    """
    settings = settings or Settings()
    if settings.server:
        from runlease.remote.runtime import open_remote_runtime

        return open_remote_runtime(settings)  # type: ignore[return-value]
    check_settings(settings)
    check_home(settings.home, key_file=None if settings.master_key is not None else settings.key_file,
               store_file=settings.store_file)
    check_file(settings.anchor_file, "audit anchor")
    keyring = load_keyring(settings)
    db = Database(settings.store_file)
    try:
        # A home that already had a format record had a secret state record too: if that is gone now,
        # `audit verify` reports it instead of a fresh one vouching for whatever the rows say.
        first_open = not store_record_path(settings.store_file).exists()
        upgrade_sqlite(db, keyring, settings.anchor_file, store_record_path(settings.store_file))
        local = LocalStore(db, keyring, secret_state_path(settings.store_file))
        local.ensure_secret_state(initialize=first_open)
        record_format(db, keyring, store_record_path(settings.store_file))
        store = remote_store(settings, keyring) or local
        return _assemble(settings, keyring, db, store, local, create_ledger=create_ledger)
    except BaseException:
        db.close()
        raise


def init_home(settings: Settings | None = None, *, kms: "KmsKeyOptions | None" = None,
              transit: "TransitKeyOptions | None" = None) -> tuple[Runtime, bool]:
    """Create the home (0700), key file (0600, unless the key comes from the environment),
    store and an example policy. Returns ``(runtime, created)``; an existing home is reused.

    ``kms``: generate the KEK with AWS KMS and keep only its wrapped form in the key
    file, bound to this store's id by the encryption context. A remote store is
    probed before anything is created.
    """
    settings = settings or Settings()
    check_settings(settings)
    if kms is not None and settings.master_key is not None:
        raise ConfigError("--kms-key-id cannot be combined with RUNLEASE_MASTER_KEY: the key would not live in KMS")
    if transit is not None and settings.master_key is not None:
        raise ConfigError("--vault-transit-key cannot be combined with RUNLEASE_MASTER_KEY: the key would not be "
                          "wrapped by Vault")
    if transit is not None and kms is not None:
        raise ConfigError("--vault-transit-key and --kms-key-id exclude each other: choose one key wrapper")
    remote = remote_store(settings)
    if remote is not None:
        remote.check()  # type: ignore[attr-defined]
    home: Path = settings.home
    if home.exists():
        _refuse_foreign_home(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_foreign_home(home)  # also when someone else created it in between
    os.chmod(home, 0o700)
    # Concurrent inits (e.g. several workers starting at once) must not each create a
    # key and a schema: one initializes, the others wait and then open what it made.
    lock_fd = os.open(home / INIT_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return _init_locked(settings, home, kms, remote, transit)
    finally:
        os.close(lock_fd)


def _refuse_foreign_home(home: Path) -> None:
    """``init`` never adopts a home another user owns (they could swap in their own key later)."""
    st = os.stat(home)
    if st.st_uid != os.geteuid():
        raise UnsafeHomeError(
            f"refusing to initialize {home}: it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            "its owner could replace the key or the store; choose another RUNLEASE_HOME")


def _init_locked(settings: Settings, home: Path, kms: "KmsKeyOptions | None",
                 remote: SecretStore | None, transit: "TransitKeyOptions | None" = None) -> tuple[Runtime, bool]:
    kms_file = kms_key_file_info(settings.key_file) if settings.master_key is None else None
    transit_file = transit_key_file_info(settings.key_file) if settings.master_key is None else None
    if kms is not None and settings.key_file.exists() and kms_file is None:
        raise ConfigError(f"{settings.key_file} is not a KMS key file; --kms-key-id only applies to a new home")
    if transit is not None and settings.key_file.exists() and transit_file is None:
        raise ConfigError(f"{settings.key_file} is not a Vault Transit key file; --vault-transit-key only applies "
                          "to a new home")
    if settings.store_file.exists():
        return open_runtime(settings, create_ledger=True), False
    store_id: str | None = kms_file[1] if kms_file else (transit_file[1] if transit_file else None)
    if settings.master_key is None and not settings.key_file.exists():
        if kms is not None:
            store_id = str(uuid.uuid4())
            keyring = create_kms_key_file(settings.key_file, kms, store_id)
        elif transit is not None:
            store_id = str(uuid.uuid4())
            keyring = create_transit_key_file(settings.key_file, transit, store_id)
        else:
            keyring = create_key_file(settings.key_file)
    else:
        keyring = load_keyring(settings)
    db = Database(settings.store_file, create=True)
    try:
        local = LocalStore.initialize(db, keyring, store_id=store_id, state_file=secret_state_path(settings.store_file))
        local.ensure_secret_state(initialize=True)
        record_format(db, keyring, store_record_path(settings.store_file))
        example = home / "policy.example.toml"
        if not example.exists():
            # 0644 whatever the umask: renamed to policy.toml it must pass the open-time checks.
            fd = os.open(example, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.fchmod(fd, 0o644)
                os.write(fd, EXAMPLE_POLICY.encode())
            finally:
                os.close(fd)
        return _assemble(settings, keyring, db, remote or local, local, create_ledger=True), True
    except BaseException:
        db.close()
        raise
