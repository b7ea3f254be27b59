"""Where the key-encryption keys come from: a 0600 key file or ``RUNLEASE_MASTER_KEY``.

The key file is JSON holding an ordered list of base64 keys (the first is
active). It is written with ``O_EXCL``/atomic rename and mode 0600, and a
file readable by group or others is refused: a KEK that other local users
can read protects nothing.

``RUNLEASE_MASTER_KEY`` holds one or more base64 keys separated by commas,
first active, for deployments that inject the key from a secret manager.
Rotating such a key means prepending the new key and running
``runlease key rotate``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
import stat
from datetime import datetime, timezone
from pathlib import Path

from runlease.crypto import KEY_BYTES, Keyring, key_id, new_key
from runlease.errors import MasterKeyError
from runlease.settings import Settings

ENV_VAR = "RUNLEASE_MASTER_KEY"


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{where}: master key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(f"{where}: master key must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _read_key_file(path: Path) -> list[bytes]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MasterKeyError(
            f"no master key: {path} does not exist; run `runlease init` or set {ENV_VAR}"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(
            f"key file {path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        doc = json.loads(path.read_text())
        keys = [_decode(entry["key"], str(path)) for entry in doc["keys"]]
    except MasterKeyError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        raise MasterKeyError(f"key file {path} is unreadable or not a runlease key file") from None
    if not keys:
        raise MasterKeyError(f"key file {path} holds no keys")
    return keys


def load_keyring(settings: Settings) -> Keyring:
    """The keyring from ``RUNLEASE_MASTER_KEY`` if set, else from the key file."""
    if settings.master_key is not None:
        raw = settings.master_key.get_secret_value()
        parts = [p for p in raw.split(",") if p.strip()]
        if not parts:
            raise MasterKeyError(f"{ENV_VAR} is set but empty")
        return Keyring([_decode(p, ENV_VAR) for p in parts])
    return Keyring(_read_key_file(settings.key_file))


def _write_atomic(path: Path, keys: list[bytes], *, exclusive: bool = False) -> None:
    doc = {
        "format": "runlease-keyfile/v1",
        "note": "first key is active; older keys stay until `runlease key rotate` re-wrapped every data key",
        "keys": [
            {"id": key_id(k), "key": encode_key(k), "added_at": datetime.now(timezone.utc).isoformat()}
            for k in keys
        ],
    }
    # A temp name per writer, so concurrent writers never rename each other's file away.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(doc, indent=2).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if not exclusive:
        os.replace(tmp, path)
        return
    # link() fails if the key file appeared meanwhile: a KEK is never replaced by a new one.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise MasterKeyError(f"key file {path} already exists; refusing to overwrite it") from None
    finally:
        os.unlink(tmp)


def create_key_file(path: Path) -> Keyring:
    """Create a new key file with one fresh KEK; refuses to overwrite an existing one."""
    if path.exists():
        raise MasterKeyError(f"key file {path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    _write_atomic(path, [key], exclusive=True)
    return Keyring([key])


def prepend_new_key(path: Path) -> Keyring:
    """Add a fresh KEK to the key file as the active one, keeping the old ones readable."""
    # Read-modify-write under a lock: two concurrent rotations must both keep their key.
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        keys = _read_key_file(path)
        keys.insert(0, new_key())
        _write_atomic(path, keys)
    finally:
        os.close(lock_fd)
    return Keyring(keys)

