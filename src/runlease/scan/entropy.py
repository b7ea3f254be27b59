"""Shannon entropy of string literals.

Random credentials (API keys, signing keys) are high-entropy strings, while the
literals that share their names in ordinary code (``token_type = "bearer"``) are
words. Entropy alone flags too much (hashes, UUIDs in tests), so the scanner only
asks this module about literals already assigned to secret-like names.
"""

from __future__ import annotations

import math
import string
from collections import Counter

_HEX = frozenset(string.hexdigits)
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=_-")


def shannon_entropy(value: str) -> float:
    """Bits of entropy per character of ``value`` (0.0 for the empty string)."""
    if not value:
        return 0.0
    length = len(value)
    return -sum((n / length) * math.log2(n / length) for n in Counter(value).values())


def looks_random(value: str) -> bool:
    """True when ``value`` looks like a machine-generated secret.

    Thresholds follow the usual scanner defaults, tightened by a minimum length
    and a character-class mix so that words and hashes of plain words do not pass:
    hex strings need >= 32 chars and 3.0 bits/char, base64-ish strings >= 20 chars,
    4.0 bits/char and both letters and digits.
    """
    length = len(value)
    if length < 16 or any(ch.isspace() for ch in value):
        return False
    entropy = shannon_entropy(value)
    chars = set(value)
    if chars <= _HEX:
        return length >= 32 and entropy >= 3.0
    has_digit = any(ch.isdigit() for ch in value)
    has_alpha = any(ch.isalpha() for ch in value)
    if not (has_digit and has_alpha):
        return False
    if chars <= _BASE64:
        return length >= 20 and entropy >= 4.0
    # Printable passwords with punctuation: shorter but still high-entropy.
    return length >= 16 and entropy >= 3.7
