"""The embedded store's KEK wrapped by AWS KMS: the key file holds only ciphertext.

Why: a plain key file is as good as the data to whoever can read it (root,
a backup, a copied volume). With KMS wrapping, the key file holds the KEK
encrypted under a KMS key (``GenerateDataKey``), and every process that
opens the store calls ``Decrypt`` -- so reading the file is useless without
the IAM permission, every unwrap is in CloudTrail, and revoking the
permission (or disabling the KMS key) locks the store.

The encryption context ``{"runlease-store": <store id>}`` is bound into the
ciphertext: KMS refuses to decrypt it under any other context, so a key
file whose store id was edited cannot be unwrapped, CloudTrail entries name
the store, and an IAM policy can restrict a host to its own store with the
condition key ``kms:EncryptionContext:runlease-store``.
"""

from __future__ import annotations

from typing import Any

from runlease.clients.awsclient import AwsConnectionOptions, AwsService
from runlease.keys.crypto import KEY_BYTES
from runlease.errors import MasterKeyError

CONTEXT_KEY = "runlease-store"
_REFUSALS = frozenset({
    "InvalidCiphertextException", "IncorrectKeyException", "NotFoundException", "DisabledException",
    "KMSInvalidStateException", "InvalidKeyUsageException", "KeyUnavailableException",
})


class KmsKeyOptions(AwsConnectionOptions):
    """Which KMS key wraps the KEK, and how to reach KMS (region, endpoint, role)."""

    #: Key id, key ARN, alias name (``alias/runlease``) or alias ARN.
    key_id: str


def encryption_context(store_id: str) -> dict[str, str]:
    return {CONTEXT_KEY: store_id}


def _kms(options: KmsKeyOptions) -> AwsService:
    return AwsService("kms", options, label="AWS KMS")


def generate_kek(options: KmsKeyOptions, store_id: str) -> tuple[bytes, bytes, str]:
    """A fresh 256-bit KEK: ``(plaintext, ciphertext blob, KMS key ARN)``."""
    from botocore.exceptions import ClientError

    context = encryption_context(store_id)
    try:
        resp: dict[str, Any] = _kms(options).call(
            "kms:GenerateDataKey", f"generating a data key under {options.key_id}",
            lambda c: c.generate_data_key(KeyId=options.key_id, KeySpec="AES_256", EncryptionContext=context),
            passthrough=_REFUSALS,
        )
    except ClientError as err:
        code = (err.response.get("Error") or {}).get("Code")
        raise MasterKeyError(f"AWS KMS refused to generate a key under {options.key_id} ({code})") from None
    plaintext = bytes(resp["Plaintext"])
    if len(plaintext) != KEY_BYTES:
        raise MasterKeyError(f"AWS KMS returned a {len(plaintext)}-byte key; expected {KEY_BYTES}")
    return plaintext, bytes(resp["CiphertextBlob"]), str(resp.get("KeyId") or options.key_id)


def decrypt_kek(options: KmsKeyOptions, blob: bytes, store_id: str, where: str) -> bytes:
    """Unwrap a KEK; a wrong context, key or blob fails with a MasterKeyError naming ``where``."""
    from botocore.exceptions import ClientError

    context = encryption_context(store_id)
    try:
        resp: dict[str, Any] = _kms(options).call(
            "kms:Decrypt", f"unwrapping the KEK in {where}",
            lambda c: c.decrypt(CiphertextBlob=blob, KeyId=options.key_id, EncryptionContext=context),
            passthrough=_REFUSALS,
        )
    except ClientError as err:
        code = (err.response.get("Error") or {}).get("Code")
        raise MasterKeyError(
            f"AWS KMS refused to unwrap the KEK in {where} ({code}) with encryption context "
            f"{{{CONTEXT_KEY!r}: {store_id!r}}} and key {options.key_id}: the key file was edited or belongs to "
            "another store, or the KMS key is wrong or disabled"
        ) from None
    plaintext = bytes(resp["Plaintext"])
    if len(plaintext) != KEY_BYTES:
        raise MasterKeyError(f"{where}: KMS unwrapped a {len(plaintext)}-byte key; expected {KEY_BYTES}")
    return plaintext
