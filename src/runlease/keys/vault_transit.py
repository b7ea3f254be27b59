"""The embedded store's KEK wrapped by Vault Transit: the key file holds only Transit ciphertext.

Why: as with AWS KMS (:mod:`runlease.keys.kms`), a plain key file is as good as
the data to whoever can read it. With Transit wrapping (``runlease init
--vault-transit-key MOUNT/KEY``) the key file holds each KEK encrypted by a
Transit key that never leaves Vault, and every process that opens the home
asks Vault to decrypt it: reading the file is useless without a Vault token
whose policy allows ``<mount>/decrypt/<key>``, every unwrap is in Vault's
audit log (with the process's ``X-Correlation-ID``), and revoking the policy,
deleting the key or raising its ``min_decryption_version`` locks the store.

The store id is bound as the Transit *associated data* (AEAD, the key type
must be ``aes256-gcm96`` or ``chacha20-poly1305``, Transit's default is the
former): ``runlease-store:<store id>``. Vault refuses to decrypt under any
other associated data, so a key file whose store id was edited, or that was
copied next to another store's database, cannot be unwrapped.

Wire calls (https://openbao.org/api-docs/secret/transit/):

* ``POST <mount>/encrypt/<key>`` with ``plaintext`` and ``associated_data``
  (base64) -> ``ciphertext`` (``vault:v<N>:...``);
* ``POST <mount>/decrypt/<key>`` with the same associated data -> ``plaintext``.

The KEK is generated locally (``os.urandom`` via :func:`runlease.keys.crypto.new_key`)
and sent to Vault only to be wrapped. How runlease reaches Vault is the same
:class:`~runlease.store.vault_auth.VaultClientOptions` as the Vault store
(address, namespace, TLS, auth method; no credentials inline), recorded in
the key file so every process goes to the same Vault.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import Field, field_validator

from runlease.keys.crypto import KEY_BYTES
from runlease.errors import (
    BackendError,
    ConfigError,
    MasterKeyError,
    StoreAccessDeniedError,
    StoreUnavailableError,
)
from runlease.store.vault_auth import VaultClientOptions, VaultSession, vault_session

AAD_PREFIX = "runlease-store:"


class TransitKeyOptions(VaultClientOptions):
    """Which Transit key wraps the KEK (``MOUNT/KEY``), and how to reach Vault."""

    key: str = Field(min_length=3)

    @field_validator("key")
    @classmethod
    def _mount_and_name(cls, value: str) -> str:
        value = value.strip("/")
        mount, _, name = value.rpartition("/")
        if not mount or not name or ".." in value:
            raise ValueError("must be MOUNT/KEY, e.g. transit/runlease-kek")
        return value

    @property
    def mount(self) -> str:
        return self.key.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


def associated_data(store_id: str) -> str:
    return f"{AAD_PREFIX}{store_id}"


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _session(options: TransitKeyOptions) -> VaultSession:
    return vault_session(options)


def _call(options: TransitKeyOptions, operation: str, body: dict[str, Any], where: str) -> dict[str, Any]:
    """One Transit call; every failure becomes a MasterKeyError (exit 3) or a BackendError (exit 9)."""
    import hvac.exceptions as hx

    session = _session(options)
    path = f"{options.mount}/{operation}/{options.name}"
    what = f"{operation}ing the KEK in {where} with Transit key {options.key}"
    try:
        response = session.call(what, lambda c: c.adapter.post(f"/v1/{path}", json=body))
    except hx.InvalidRequest as err:
        detail = "; ".join(str(e) for e in (err.errors or []))[:200]
        raise MasterKeyError(
            f"Vault Transit at {session.address} refused {operation} with key {options.key} for {where} ({detail}) "
            f"with associated data {body.get('associated_data') and associated_data_text(body)!r}: the key file "
            "was edited or belongs to another store, or the Transit key is wrong or too old "
            "(min_decryption_version)"
        ) from None
    except hx.InvalidPath:
        raise MasterKeyError(
            f"Vault Transit at {session.address}: no key {options.name!r} under the mount {options.mount!r} "
            f"(deleted, or a wrong --vault-transit-key); the KEK in {where} cannot be unwrapped"
        ) from None
    except StoreAccessDeniedError as err:
        raise MasterKeyError(
            f"Vault denied {path} needed to {operation} the KEK in {where}: {err}"
        ) from None
    except StoreUnavailableError as err:
        raise BackendError(f"cannot {operation} the KEK in {where}: {err}") from None
    return dict((response or {}).get("data") or {})


def associated_data_text(body: dict[str, Any]) -> str:
    try:
        return base64.b64decode(body["associated_data"]).decode()
    except (KeyError, ValueError, binascii.Error):
        return "?"


def wrap_kek(options: TransitKeyOptions, key: bytes, store_id: str, where: str) -> str:
    """The Transit ciphertext (``vault:vN:...``) of ``key``, bound to ``store_id``."""
    data = _call(options, "encrypt", {"plaintext": _b64(key), "associated_data": _b64(associated_data(store_id))},
                 where)
    ciphertext = data.get("ciphertext")
    if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:"):
        raise MasterKeyError(f"Vault Transit answered encrypt for {where} without a ciphertext")
    return ciphertext


def unwrap_kek(options: TransitKeyOptions, ciphertext: str, store_id: str, where: str) -> bytes:
    """Unwrap a KEK; a wrong store id, key or ciphertext fails with a MasterKeyError naming ``where``."""
    data = _call(options, "decrypt", {"ciphertext": ciphertext,
                                      "associated_data": _b64(associated_data(store_id))}, where)
    try:
        key = base64.b64decode(data["plaintext"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise MasterKeyError(f"Vault Transit answered decrypt for {where} without a valid plaintext") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{where}: Vault Transit unwrapped a {len(key)}-byte key; expected {KEY_BYTES}")
    return key


def key_version(ciphertext: str) -> int | None:
    """The Transit key version a ciphertext was made with (``vault:v3:...`` -> 3)."""
    parts = ciphertext.split(":")
    if len(parts) >= 3 and parts[1].startswith("v") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def transit_options(key: str, raw: dict[str, Any] | None) -> TransitKeyOptions:
    """Options for ``--vault-transit-key`` from a connection dict (store options or the key file)."""
    from pydantic import ValidationError

    fields = {k: v for k, v in (raw or {}).items() if k in VaultClientOptions.model_fields}
    try:
        options = TransitKeyOptions.model_validate({**fields, "key": key})
    except ValidationError as err:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError("Vault Transit key options: " + "; ".join(parts)) from None  # values not echoed
    resolved = options.resolved()
    return TransitKeyOptions.model_validate({**resolved.model_dump(), "key": options.key})
