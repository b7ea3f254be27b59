"""Where the key-encryption keys come from: a 0600 key file or ``RUNLEASE_MASTER_KEY``.

The key file is JSON holding an ordered list of base64 keys (the first is
active). It is written with ``O_EXCL``/atomic rename and mode 0600, and a
file readable by group or others is refused: a KEK that other local users
can read protects nothing.

A second format, ``runlease-keyfile-kms/v1``, holds each KEK wrapped by AWS
KMS instead (``runlease init --kms-key-id``): the file names the KMS key and
the store id used as the encryption context, and every load asks KMS to
unwrap (see :mod:`runlease.keys.kms`). Same 0600 rule, same "first key is active".

A third, ``runlease-keyfile-vault-transit/v1``, holds each KEK wrapped by a
Vault Transit key (``runlease init --vault-transit-key MOUNT/KEY``), bound to
the store id as Transit associated data, with the Vault connection settings
(never a credential); every load asks Vault to decrypt (see
:mod:`runlease.keys.vault_transit`).

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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runlease.keys.crypto import KEY_BYTES, Keyring, key_id, new_key
from runlease.errors import MasterKeyError
from runlease.integrity.home_guard import UnsafeKeyFileError, check_file, open_nofollow
from runlease.settings import Settings

ENV_VAR = "RUNLEASE_MASTER_KEY"
PLAIN_FORMAT = "runlease-keyfile/v1"
KMS_FORMAT = "runlease-keyfile-kms/v1"
TRANSIT_FORMAT = "runlease-keyfile-vault-transit/v1"

if TYPE_CHECKING:
    from runlease.keys.kms import KmsKeyOptions
    from runlease.keys.vault_transit import TransitKeyOptions


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
    if not check_file(path, "key file", secret=True, allow_root=True, error=UnsafeKeyFileError):
        raise MasterKeyError(
            f"no master key: {path} does not exist; run `runlease init` or set {ENV_VAR}"
        )
    doc = _read_doc(path)
    if doc.get("format") == KMS_FORMAT:
        return _unwrap_kms(path, doc)
    if doc.get("format") == TRANSIT_FORMAT:
        return _unwrap_transit(path, doc)
    try:
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


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(open_nofollow(path, "key file", UnsafeKeyFileError))
    except (OSError, ValueError):
        raise MasterKeyError(f"key file {path} is unreadable or not a runlease key file") from None
    if not isinstance(doc, dict):
        raise MasterKeyError(f"key file {path} is not a runlease key file")
    return doc


def _kms_options(path: Path, doc: dict[str, Any]) -> tuple["KmsKeyOptions", str]:
    from pydantic import ValidationError

    from runlease.keys.kms import KmsKeyOptions

    try:
        return KmsKeyOptions.model_validate(doc["kms"]), str(doc["store_id"])
    except (KeyError, TypeError, ValidationError):
        raise MasterKeyError(f"KMS key file {path} is missing or has a malformed 'kms'/'store_id' entry") from None


def _unwrap_kms(path: Path, doc: dict[str, Any]) -> list[bytes]:
    """Ask KMS to unwrap every KEK in a KMS key file; each must match its recorded id."""
    from runlease.keys.kms import decrypt_kek

    options, store_id = _kms_options(path, doc)
    keys = []
    try:
        entries = [(str(e["id"]), base64.b64decode(e["wrapped"], validate=True)) for e in doc["keys"]]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise MasterKeyError(f"KMS key file {path} has a malformed 'keys' list") from None
    for kid, blob in entries:
        key = decrypt_kek(options, blob, store_id, str(path))
        if key_id(key) != kid:
            raise MasterKeyError(f"KMS key file {path}: the key unwrapped for {kid} has id {key_id(key)}")
        keys.append(key)
    return keys


def _transit_options(path: Path, doc: dict[str, Any]) -> tuple["TransitKeyOptions", str]:
    from runlease.errors import ConfigError
    from runlease.keys.vault_transit import transit_options

    try:
        transit = doc["transit"]
        return transit_options(str(transit["key"]), dict(transit)), str(doc["store_id"])
    except (KeyError, TypeError, ValueError):
        raise MasterKeyError(f"Vault Transit key file {path} is missing or has a malformed 'transit'/'store_id' "
                             "entry") from None
    except ConfigError as err:
        raise MasterKeyError(f"Vault Transit key file {path}: {err}") from None


def _transit_entries(path: Path, doc: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        return [(str(e["id"]), str(e["wrapped"])) for e in doc["keys"]]
    except (KeyError, TypeError):
        raise MasterKeyError(f"Vault Transit key file {path} has a malformed 'keys' list") from None


def _unwrap_transit(path: Path, doc: dict[str, Any]) -> list[bytes]:
    """Ask Vault Transit to unwrap every KEK in the key file; each must match its recorded id."""
    from runlease.keys.vault_transit import unwrap_kek

    options, store_id = _transit_options(path, doc)
    keys = []
    for kid, wrapped in _transit_entries(path, doc):
        key = unwrap_kek(options, wrapped, store_id, str(path))
        if key_id(key) != kid:
            raise MasterKeyError(f"Vault Transit key file {path}: the key unwrapped for {kid} has id {key_id(key)}")
        keys.append(key)
    if not keys:
        raise MasterKeyError(f"key file {path} holds no keys")
    return keys


def transit_key_file_info(path: Path) -> tuple[str, str, list[int | None]] | None:
    """``(MOUNT/KEY, store id, Transit key versions per KEK)`` of a Transit key file, else None."""
    from runlease.keys.vault_transit import key_version

    if not path.exists():
        return None
    try:
        doc = _read_doc(path)
    except MasterKeyError:
        return None
    if doc.get("format") != TRANSIT_FORMAT:
        return None
    try:
        return (str(doc["transit"]["key"]), str(doc["store_id"]),
                [key_version(w) for _, w in _transit_entries(path, doc)])
    except (KeyError, TypeError):
        raise MasterKeyError(f"Vault Transit key file {path} is malformed") from None


def _transit_entry(options: "TransitKeyOptions", key: bytes, store_id: str, where: str) -> dict[str, Any]:
    from runlease.keys.vault_transit import wrap_kek

    return {"id": key_id(key), "wrapped": wrap_kek(options, key, store_id, where),
            "added_at": datetime.now(timezone.utc).isoformat()}


def create_transit_key_file(path: Path, options: "TransitKeyOptions", store_id: str) -> Keyring:
    """Create a key file whose one fresh KEK is wrapped by Vault Transit; refuses to overwrite."""
    from runlease.keys.vault_transit import associated_data

    if path.exists():
        raise MasterKeyError(f"key file {path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    entry = _transit_entry(options, key, store_id, str(path))
    _write_doc(path, exclusive=True, doc={
        "format": TRANSIT_FORMAT,
        "note": "KEKs wrapped by Vault Transit; first is active. Unwrapping needs <mount>/decrypt/<key> with this "
                "associated data.",
        "store_id": store_id,
        "associated_data": associated_data(store_id),
        "transit": options.model_dump(mode="json", exclude_defaults=True),
        "keys": [entry],
    })
    return Keyring([key])


def is_kms_key_file(path: Path) -> bool:
    try:
        return _read_doc(path).get("format") == KMS_FORMAT
    except MasterKeyError:
        return False


def kms_key_file_info(path: Path) -> tuple[str, str] | None:
    """``(kms key id, store id)`` of a KMS key file, None for a plain one (or none at all)."""
    if not path.exists() or not is_kms_key_file(path):
        return None
    options, store_id = _kms_options(path, _read_doc(path))
    return options.key_id, store_id


def _write_doc(path: Path, doc: dict[str, Any], *, exclusive: bool = False) -> None:
    """Write the key file atomically (0600); ``exclusive`` never replaces an existing one."""
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


def _kms_entry(options: "KmsKeyOptions", store_id: str) -> tuple[bytes, dict[str, Any]]:
    from runlease.keys.kms import generate_kek

    key, blob, arn = generate_kek(options, store_id)
    entry = {"id": key_id(key), "wrapped": base64.b64encode(blob).decode(), "kms_key": arn,
             "added_at": datetime.now(timezone.utc).isoformat()}
    return key, entry


def create_kms_key_file(path: Path, options: "KmsKeyOptions", store_id: str) -> Keyring:
    """Create a key file whose one fresh KEK is generated and wrapped by KMS; refuses to overwrite."""
    from runlease.keys.kms import encryption_context

    if path.exists():
        raise MasterKeyError(f"key file {path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key, entry = _kms_entry(options, store_id)
    _write_doc(path, exclusive=True, doc={
        "format": KMS_FORMAT,
        "note": "KEKs wrapped by AWS KMS; first is active. Unwrapping needs kms:Decrypt with this encryption context.",
        "store_id": store_id,
        "encryption_context": encryption_context(store_id),
        "kms": options.model_dump(mode="json", exclude_defaults=True),
        "keys": [entry],
    })
    return Keyring([key])


def _write_atomic(path: Path, keys: list[bytes], *, exclusive: bool = False) -> None:
    doc = {
        "format": PLAIN_FORMAT,
        "note": "first key is active; older keys stay until `runlease key rotate` re-wrapped every data key",
        "keys": [
            {"id": key_id(k), "key": encode_key(k), "added_at": datetime.now(timezone.utc).isoformat()}
            for k in keys
        ],
    }
    _write_doc(path, doc, exclusive=exclusive)


def create_key_file(path: Path) -> Keyring:
    """Create a new key file with one fresh KEK; refuses to overwrite an existing one."""
    if path.exists():
        raise MasterKeyError(f"key file {path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    _write_atomic(path, [key], exclusive=True)
    return Keyring([key])


def prepend_new_key(path: Path) -> Keyring:
    """Add a fresh KEK to the key file as the active one, keeping the old ones readable.

    For a KMS key file the new KEK is generated (and wrapped) by the same KMS key.
    The read-modify-write runs under a lock: two concurrent rotations must both
    keep their key.
    """
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        keys = _read_key_file(path)  # for a KMS file this also proves we can still unwrap the old ones
        doc = _read_doc(path)
        if doc.get("format") == TRANSIT_FORMAT:
            # A new KEK, and every old one wrapped again under the Transit key's latest version, so
            # an operator can rotate the Transit key and raise min_decryption_version afterwards.
            options, store_id = _transit_options(path, doc)
            key = new_key()
            doc["keys"] = [_transit_entry(options, k, store_id, str(path)) for k in (key, *keys)]
            _write_doc(path, doc)
            return Keyring([key, *keys])
        if is_kms_key_file(path):
            doc = _read_doc(path)
            options, store_id = _kms_options(path, doc)
            key, entry = _kms_entry(options, store_id)
            doc["keys"].insert(0, entry)
            _write_doc(path, doc)
            return Keyring([key, *keys])
        keys.insert(0, new_key())
        _write_atomic(path, keys)
        return Keyring(keys)
    finally:
        os.close(lock_fd)
