"""Structure checks that vendors build into their tokens.

Several vendors make a token self-checking, so a scanner can tell a real token
from a made-up string of the right shape without asking the vendor:

* GitHub (``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``) and npm (``npm_``) end
  their 36 characters with the CRC32 of the first 30, in base62, 6 digits wide.
* PyPI API tokens are ``pypi-`` plus a base64url macaroon (v2 serialisation):
  version byte 2, location ``pypi.org`` (or ``test.pypi.org``), and a 32-byte
  signature field at the end.

A documentation value (``ghp_1234567890abcdef...``) or a hand-made test fixture
fails these checks; a real token passes with probability 1.
"""

from __future__ import annotations

import base64
import binascii
import zlib

_BASE62_DIGITS_FIRST = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_LOWER_FIRST = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def base62(number: int, width: int, alphabet: str = _BASE62_DIGITS_FIRST) -> str:
    """``number`` in base62, left-padded with the zero digit to ``width``."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(alphabet[rest])
    return "".join(reversed(digits)).rjust(width, alphabet[0])


def crc32_base62(text: str, alphabet: str = _BASE62_DIGITS_FIRST) -> str:
    """The 6-character checksum GitHub and npm append to a token's random part."""
    return base62(zlib.crc32(text.encode("ascii")), 6, alphabet)


def has_crc32_suffix(prefix: str, body: str) -> bool:
    """True when the last 6 characters of ``body`` are the CRC32 checksum of the rest.

    Both base62 digit orders and both inputs (random part alone, or with the
    prefix) are accepted: a random string passes one of the four by chance with
    probability ~4/62**6, so this costs no precision and does not hinge on one
    detail of an undocumented scheme.
    """
    if len(body) <= 6 or not body.isascii():
        return False
    random_part, check = body[:-6], body[-6:]
    for alphabet in (_BASE62_DIGITS_FIRST, _BASE62_LOWER_FIRST):
        for data in (random_part, prefix + random_part):
            if crc32_base62(data, alphabet) == check:
                return True
    return False


_PYPI_LOCATIONS = (b"\x01\x08pypi.org", b"\x01\x0dtest.pypi.org")


def is_pypi_macaroon(body: str) -> bool:
    """Is ``body`` (the part after ``pypi-``) a serialised PyPI macaroon?"""
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return False
    if len(raw) < 60 or raw[0] != 2 or not raw[1:].startswith(_PYPI_LOCATIONS):
        return False
    return raw[-34:-32] == b"\x06\x20"  # signature field: type 6, 32 bytes
