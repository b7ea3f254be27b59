from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease.keys.crypto import KEY_BYTES, Keyring, Sealed, key_id, new_key, rewrap, seal, unseal
from runlease.errors import IntegrityError, MasterKeyError

PATH = "prod/connections/warehouse"


@pytest.fixture
def kek() -> bytes:
    return new_key()


@pytest.fixture
def keyring(kek: bytes) -> Keyring:
    return Keyring([kek])


@given(plaintext=st.binary(max_size=4096), version=st.integers(1, 2**31))
def test_property_seal_unseal_round_trip(plaintext: bytes, version: int) -> None:
    ring = Keyring([new_key()])
    sealed = seal(ring, plaintext, PATH, version)
    assert sealed.kek_id == ring.active_id
    assert unseal(ring, sealed, PATH, version) == plaintext
    if len(plaintext) >= 8:
        assert plaintext not in sealed.ciphertext and plaintext not in sealed.wrapped_dek


def test_every_seal_uses_a_fresh_data_key_and_nonce(keyring: Keyring) -> None:
    a = seal(keyring, b"same value", PATH, 1)
    b = seal(keyring, b"same value", PATH, 1)
    assert a.ciphertext != b.ciphertext
    assert a.wrapped_dek != b.wrapped_dek


def test_unseal_with_another_path_fails(keyring: Keyring) -> None:
    sealed = seal(keyring, b"hunter2-secret", PATH, 1)
    with pytest.raises(IntegrityError) as exc:
        unseal(keyring, sealed, "prod/connections/other", 1)
    assert "prod/connections/other" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_unseal_with_another_version_fails(keyring: Keyring) -> None:
    sealed = seal(keyring, b"hunter2-secret", PATH, 1)
    with pytest.raises(IntegrityError, match="v2"):
        unseal(keyring, sealed, PATH, 2)


def test_unseal_with_another_environment_fails(keyring: Keyring) -> None:
    sealed = seal(keyring, b"hunter2-secret", "dev/connections/warehouse", 1)
    with pytest.raises(IntegrityError):
        unseal(keyring, sealed, "prod/connections/warehouse", 1)


def test_swapping_wrapped_deks_between_versions_fails(keyring: Keyring) -> None:
    v1 = seal(keyring, b"value one", PATH, 1)
    v2 = seal(keyring, b"value two", PATH, 2)
    with pytest.raises(IntegrityError):
        unseal(keyring, dataclasses.replace(v1, wrapped_dek=v2.wrapped_dek), PATH, 1)
    with pytest.raises(IntegrityError):
        unseal(keyring, dataclasses.replace(v2, wrapped_dek=v1.wrapped_dek), PATH, 2)


def test_swapping_ciphertexts_between_versions_fails(keyring: Keyring) -> None:
    v1 = seal(keyring, b"value one", PATH, 1)
    v2 = seal(keyring, b"value two", PATH, 2)
    with pytest.raises(IntegrityError):
        unseal(keyring, dataclasses.replace(v1, ciphertext=v2.ciphertext), PATH, 1)
    with pytest.raises(IntegrityError):
        unseal(keyring, dataclasses.replace(v2, ciphertext=v1.ciphertext), PATH, 2)


def test_swapping_both_blobs_to_another_version_fails(keyring: Keyring) -> None:
    v2 = seal(keyring, b"value two", PATH, 2)
    with pytest.raises(IntegrityError):
        unseal(keyring, v2, PATH, 1)


@pytest.mark.parametrize("field", ["wrapped_dek", "ciphertext"])
def test_flipped_bit_fails(keyring: Keyring, field: str) -> None:
    sealed = seal(keyring, b"value", PATH, 1)
    blob = bytearray(getattr(sealed, field))
    blob[-1] ^= 0x01
    with pytest.raises(IntegrityError):
        unseal(keyring, dataclasses.replace(sealed, **{field: bytes(blob)}), PATH, 1)


def test_relabelled_kek_id_fails(kek: bytes) -> None:
    other = new_key()
    ring = Keyring([kek, other])
    sealed = seal(ring, b"value", PATH, 1)
    # Claiming the DEK was wrapped by the other loaded key is caught by the DEK's AAD.
    with pytest.raises(IntegrityError):
        unseal(ring, dataclasses.replace(sealed, kek_id=key_id(other)), PATH, 1)


def test_rewrap_changes_kek_and_wrapped_dek_but_not_ciphertext(kek: bytes) -> None:
    old_ring = Keyring([kek])
    sealed = seal(old_ring, b"rotate me please", PATH, 3)
    new = new_key()
    ring = Keyring([new, kek])
    rewrapped = rewrap(ring, sealed, PATH, 3)
    assert rewrapped.kek_id == key_id(new) != sealed.kek_id
    assert rewrapped.wrapped_dek != sealed.wrapped_dek
    assert rewrapped.ciphertext == sealed.ciphertext  # byte-identical payload
    assert unseal(ring, rewrapped, PATH, 3) == b"rotate me please"
    assert unseal(Keyring([new]), rewrapped, PATH, 3) == b"rotate me please"


def test_unseal_without_the_wrapping_key_is_a_master_key_error(kek: bytes) -> None:
    sealed = seal(Keyring([kek]), b"value", PATH, 1)
    with pytest.raises(MasterKeyError, match=sealed.kek_id):
        unseal(Keyring([new_key()]), sealed, PATH, 1)


def test_keyring_rejects_bad_keys() -> None:
    with pytest.raises(MasterKeyError):
        Keyring([])
    with pytest.raises(MasterKeyError, match=str(KEY_BYTES)):
        Keyring([b"short"])


def test_keyring_first_key_is_active_and_duplicates_collapse(kek: bytes) -> None:
    other = new_key()
    ring = Keyring([other, kek, other])
    assert ring.active_id == key_id(other)
    assert ring.ids == [key_id(other), key_id(kek)]
    assert key_id(kek) in ring and "kek-0000" not in ring


def test_key_ids_are_stable_and_distinct(kek: bytes) -> None:
    assert key_id(kek) == key_id(bytes(kek))
    assert key_id(kek) != key_id(new_key())
    assert kek.hex() not in key_id(kek)


def _encodings(key: bytes) -> list[str]:
    return [
        key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="), repr(key), str(key),
    ]


def test_keyring_repr_and_str_never_show_key_bytes(kek: bytes) -> None:
    other = new_key()
    ring = Keyring([kek, other])
    ring.audit_key(ring.active_id)  # populate the derived-key cache too
    shown = repr(ring) + str(ring) + f"{ring}" + repr(vars(ring).keys())
    for key in (kek, other, ring.audit_key(ring.active_id)):
        for form in _encodings(key):
            assert form not in shown
    assert ring.active_id in repr(ring)


def test_audit_key_is_derived_not_the_kek(kek: bytes) -> None:
    ring = Keyring([kek])
    audit = ring.audit_key(ring.active_id)
    assert len(audit) == 32
    assert audit != kek
    assert audit == ring.audit_key(ring.active_id)  # deterministic
    assert audit == Keyring([kek]).audit_key(key_id(kek))  # same KEK, same audit key in any process
    other = Keyring([new_key()])
    assert other.audit_key(other.active_id) != audit


def test_key_check_detects_a_wrong_key(kek: bytes) -> None:
    ring = Keyring([kek])
    token = ring.key_check()
    assert ring.verify_key_check(ring.active_id, token)
    wrong = Keyring([new_key()])
    assert not wrong.verify_key_check(ring.active_id, token)
    assert not wrong.verify_key_check(wrong.active_id, token)
    tampered = bytearray(token)
    tampered[-1] ^= 1
    assert not ring.verify_key_check(ring.active_id, bytes(tampered))


def test_sealed_is_immutable(keyring: Keyring) -> None:
    sealed = seal(keyring, b"x", PATH, 1)
    assert isinstance(sealed, Sealed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sealed.kek_id = "other"  # type: ignore[misc]
