"""Envelope encryption: AES-256-GCM payloads under per-version data keys, wrapped by a KEK.

Why envelope encryption: every version gets a fresh 256-bit data key (DEK)
and nonce, so no key/nonce pair is ever reused and rotating the
key-encryption key (KEK) only re-wraps 32-byte DEKs, never payloads.

Why AAD: the payload is bound to ``path|version`` and the wrapped DEK to
``path|version|kek_id``. Copying a ciphertext row to another path or
relabelling its version makes GCM authentication fail, so a database writer
without the KEK cannot move a credential to where another principal may
lease it.

All primitives come from ``cryptography`` (AESGCM, HKDF); nothing here is
a home-made cipher.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runlease.errors import IntegrityError, MasterKeyError

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_CHECK_PLAINTEXT = b"runlease key check v1"
#: HKDF ``info`` labels: one derived key per purpose.
AUDIT_HMAC_INFO = b"runlease/v1/audit-hmac"
ROW_MAC_INFO = b"runlease/v1/row-mac"
ANCHOR_MAC_INFO = b"runlease/v1/audit-anchor"


def new_key() -> bytes:
    """A fresh random 256-bit key (DEK or KEK)."""
    return AESGCM.generate_key(bit_length=256)


def key_id(kek: bytes) -> str:
    """A stable, non-secret name for a KEK: a truncated hash, so no registry is needed.

    Two different keys get different ids, which is how a wrong key is
    recognised before anything is decrypted or written.
    """
    return "kek-" + hashlib.sha256(b"runlease-kek-id\x00" + kek).hexdigest()[:16]


def payload_aad(path: str, version: int) -> bytes:
    return f"runlease/v1/payload|{path}|{version}".encode()


def dek_aad(path: str, version: int, kek_id: str) -> bytes:
    return f"runlease/v1/dek|{path}|{version}|{kek_id}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


class Keyring:
    """The KEKs a process holds: one active (wraps new DEKs) and older ones (still unwrap).

    Old KEKs stay usable until ``runlease key rotate`` has re-wrapped every
    DEK under the active one; they also still verify audit events they MAC'd.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise MasterKeyError("no master key: run `runlease init` or set RUNLEASE_MASTER_KEY")
        for k in keys:
            if len(k) != KEY_BYTES:
                raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(k)}")
        self._keys: dict[str, bytes] = {}
        for k in keys:
            self._keys.setdefault(key_id(k), k)
        self.active_id = key_id(keys[0])
        self._derived: dict[tuple[str, bytes], bytes] = {}

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, kek_id: str) -> bool:
        return kek_id in self._keys

    def __repr__(self) -> str:  # never show key bytes
        return f"Keyring(active={self.active_id!r}, ids={self.ids!r})"

    def _key(self, kek_id: str) -> bytes:
        try:
            return self._keys[kek_id]
        except KeyError:
            raise MasterKeyError(
                f"master key {kek_id} is needed but not loaded (loaded: {', '.join(self.ids)}); "
                "check the key file or RUNLEASE_MASTER_KEY"
            ) from None

    def wrap_dek(self, dek: bytes, path: str, version: int) -> tuple[str, bytes]:
        kid = self.active_id
        return kid, _seal(self._keys[kid], dek, dek_aad(path, version, kid))

    def unwrap_dek(self, kek_id: str, wrapped: bytes, path: str, version: int) -> bytes:
        try:
            return _open(self._key(kek_id), wrapped, dek_aad(path, version, kek_id))
        except InvalidTag:
            raise IntegrityError(
                f"data key of {path} v{version} failed authentication (moved, relabelled or corrupted)"
            ) from None

    def key_check(self, kek_id: str | None = None) -> bytes:
        """A token proving possession of a KEK; stored so a wrong key is caught at open."""
        kid = kek_id or self.active_id
        return _seal(self._key(kid), _KEY_CHECK_PLAINTEXT, f"runlease/v1/key-check|{kid}".encode())

    def verify_key_check(self, kek_id: str, token: bytes) -> bool:
        if kek_id not in self._keys:
            return False
        try:
            return _open(self._keys[kek_id], token, f"runlease/v1/key-check|{kek_id}".encode()) == _KEY_CHECK_PLAINTEXT
        except InvalidTag:
            return False

    def derived_key(self, kek_id: str, purpose: bytes) -> bytes:
        """A 256-bit key for one ``purpose``, derived (HKDF-SHA256) from a KEK.

        Derived rather than the KEK itself so no two uses (sealing data keys, the
        audit chain, row authentication, the anchor) ever share a key.
        """
        cache_key = (kek_id, purpose)
        cached = self._derived.get(cache_key)
        if cached is None:
            cached = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(self._key(kek_id))
            self._derived[cache_key] = cached
        return cached

    def audit_key(self, kek_id: str) -> bytes:
        """HMAC key for the audit chain."""
        return self.derived_key(kek_id, AUDIT_HMAC_INFO)

    def row_key(self, kek_id: str) -> bytes:
        """HMAC key for stored rows the broker acts on (secret metadata, stages, versions, leases)."""
        return self.derived_key(kek_id, ROW_MAC_INFO)

    def anchor_key(self, kek_id: str) -> bytes:
        """HMAC key that signs the audit anchor file."""
        return self.derived_key(kek_id, ANCHOR_MAC_INFO)


@dataclass(frozen=True)
class Sealed:
    """One encrypted version as stored: which KEK wrapped its DEK, and the two blobs."""

    kek_id: str
    wrapped_dek: bytes
    ciphertext: bytes


def seal(keyring: Keyring, plaintext: bytes, path: str, version: int) -> Sealed:
    """Encrypt one version under a fresh DEK bound to ``path`` and ``version``."""
    dek = new_key()
    kid, wrapped = keyring.wrap_dek(dek, path, version)
    return Sealed(kid, wrapped, _seal(dek, plaintext, payload_aad(path, version)))


def unseal(keyring: Keyring, sealed: Sealed, path: str, version: int) -> bytes:
    dek = keyring.unwrap_dek(sealed.kek_id, sealed.wrapped_dek, path, version)
    try:
        return _open(dek, sealed.ciphertext, payload_aad(path, version))
    except InvalidTag:
        raise IntegrityError(
            f"ciphertext of {path} v{version} failed authentication (moved, relabelled or corrupted)"
        ) from None


def rewrap(keyring: Keyring, sealed: Sealed, path: str, version: int) -> Sealed:
    """Re-wrap a version's DEK under the active KEK; the payload ciphertext is untouched."""
    dek = keyring.unwrap_dek(sealed.kek_id, sealed.wrapped_dek, path, version)
    kid, wrapped = keyring.wrap_dek(dek, path, version)
    return Sealed(kid, wrapped, sealed.ciphertext)


def mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()
