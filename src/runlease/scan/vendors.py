"""Vendor token formats: credentials recognised by their value, whatever they are named.

The name rules need ``token = "..."``; a key pasted into ``headers={...}``, a
``KEY = "..."`` constant or a raw .env line only has its value. Most vendors ML
platforms use put a fixed prefix and a fixed alphabet and length in their tokens
(``hf_``, ``sk-proj-``, ``sk-ant-api03-``, ``dapi``, ``AIza``, ``npm_`` ...),
so a regex per vendor finds them by value.

Each :class:`VendorFormat` is one regex plus filters that keep its precision:

* the prefilter keywords that must occur before the regex runs at all (most
  files have none, which keeps the scan fast);
* a placeholder check on the random part (``hf_xxxx...``, ``dapi0000...``);
* a minimum Shannon entropy of the random part;
* a vendor checksum or structure check where the vendor has one (GitHub and npm
  CRC32, PyPI macaroons: :mod:`runlease.scan.checksums`).

Formats without a value signature (legacy 40-hex W&B keys, Twilio auth tokens)
are found only next to their context (``wandb`` on the line, an ``AC...``
account SID close by), never by value alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .checksums import has_crc32_suffix, is_pypi_macaroon
from .entropy import shannon_entropy
from .models import Hit
from .patterns import _finditer_hits
from .prefilter import PrefilterResult
from .textindex import TextIndex
from .values import is_placeholder_token

# Left and right token boundaries: not inside a longer identifier or token.
_L = r"(?<![A-Za-z0-9_\-])"
_R = r"(?![A-Za-z0-9_\-])"


@dataclass(frozen=True)
class VendorFormat:
    """One vendor token format.

    The regex names the fixed prefix ``prefix`` and the random part ``body``
    (``prefix2``/``body2`` for a second alternative); the filters judge the body
    and the whole match is the reported span. ``keywords`` are lower-case prefilter keywords; an empty tuple
    means the regex runs on every file (only for formats with a cheap literal
    prefix the regex engine can search for itself).
    """

    rule_id: str
    keywords: tuple[str, ...]
    regex: re.Pattern[str]
    min_entropy: float = 3.0
    check: Callable[[str, str], bool] | None = None  # (prefix, body) -> is it real?

    @property
    def group(self) -> str:
        """The prefilter group this format's keywords belong to."""
        return f"vendor:{self.rule_id}"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _openai_check(prefix: str, body: str) -> bool:
    # Project/service-account/admin keys carry "T3BlbkFJ" (base64 of "OpenAI") in
    # most generations; without it, demand a long, high-entropy body.
    return "T3BlbkFJ" in body or (len(body) >= 40 and shannon_entropy(body) >= 4.5)


VENDOR_FORMATS: tuple[VendorFormat, ...] = (
    VendorFormat(
        "openai-api-key",
        ("sk-proj-", "sk-svcacct-", "sk-admin-", "t3blbkfj"),
        _rx(
            _L + r"(?P<prefix>sk-(?:proj|svcacct|admin|None)-)(?P<body>[A-Za-z0-9_\-]{40,250})" + _R
            + r"|" + _L + r"(?P<prefix2>sk-)(?P<body2>[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})" + _R
        ),
        check=_openai_check,
    ),
    VendorFormat(
        "anthropic-api-key",
        ("sk-ant-",),
        _rx(_L + r"(?P<prefix>sk-ant-(?:api|admin|oat|ort)\d\d-)(?P<body>[A-Za-z0-9_\-]{80,120})" + _R),
        min_entropy=4.5,
    ),
    VendorFormat(
        "huggingface-token",
        ("hf_", "api_org_"),
        _rx(_L + r"(?P<prefix>hf_|api_org_)(?P<body>[A-Za-z0-9]{34})" + _R),
        min_entropy=3.8,
    ),
    VendorFormat(
        "wandb-api-key",
        ("wandb_v1_",),
        _rx(_L + r"(?P<prefix>wandb_v1_)(?P<body>[A-Za-z0-9]{20,40}_[A-Za-z0-9]{40,60})" + _R),
        min_entropy=4.5,
    ),
    VendorFormat(
        "stripe-secret-key",
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"),
        _rx(_L + r"(?P<prefix>(?:sk|rk)_(?:live|test)_|whsec_)(?P<body>[A-Za-z0-9]{24,247})" + _R),
        min_entropy=3.8,
    ),
    VendorFormat(
        "azure-ad-client-secret",
        ("q~",),
        # Entra ID (Azure AD) app secrets: 3 chars, a digit, "Q~", 31-34 chars.
        _rx(
            r"(?<![A-Za-z0-9_~.\-])(?P<body>[A-Za-z0-9_~.\-]{3}\d(?P<prefix>Q~)[A-Za-z0-9_~.\-]{31,34})"
            r"(?![A-Za-z0-9_~.\-])"
        ),
        min_entropy=4.0,
    ),
    VendorFormat(
        "gcp-api-key",
        ("aiza",),
        _rx(_L + r"(?P<prefix>AIza)(?P<body>[A-Za-z0-9_\-]{35})" + _R),
        min_entropy=3.8,
    ),
    VendorFormat(
        "databricks-token",
        ("dapi",),
        _rx(_L + r"(?P<prefix>dapi)(?P<body>[a-f0-9]{32})(?:-\d)?" + _R),
        min_entropy=3.2,
    ),
    VendorFormat(
        "twilio-api-key",
        (),  # "SK" + 32 hex: no keyword; the literal comes first so re searches it fast
        _rx(r"(?P<prefix>S(?<![A-Za-z0-9_\-]S)K)(?P<body>[0-9a-f]{32})" + _R),
        min_entropy=3.2,
    ),
    VendorFormat(
        "sendgrid-api-key",
        ("sg.",),
        _rx(_L + r"(?P<prefix>SG\.)(?P<body>[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})" + _R),
        min_entropy=4.0,
    ),
    VendorFormat(
        "npm-token",
        ("npm_",),
        _rx(_L + r"(?P<prefix>npm_)(?P<body>[A-Za-z0-9]{36})" + _R),
        check=has_crc32_suffix,
    ),
    VendorFormat(
        "pypi-token",
        ("pypi-ag",),
        _rx(_L + r"(?P<prefix>pypi-)(?P<body>Ag(?:EIcHlwaS5vcmc|ENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_\-]{50,})" + _R),
        check=lambda _prefix, body: is_pypi_macaroon(body),
    ),
    VendorFormat(
        "notion-token",
        ("secret_", "ntn_"),
        _rx(_L + r"(?P<prefix>secret_|ntn_)(?P<body>(?<=secret_)[A-Za-z0-9]{43}|(?<=ntn_)\d{11}[A-Za-z0-9]{35})" + _R),
        min_entropy=4.0,
    ),
    VendorFormat(
        "replicate-token",
        ("r8_",),
        _rx(_L + r"(?P<prefix>r8_)(?P<body>[A-Za-z0-9]{37})" + _R),
        min_entropy=4.0,
    ),
    VendorFormat(
        "groq-api-key",
        ("gsk_",),
        _rx(_L + r"(?P<prefix>gsk_)(?P<body>[A-Za-z0-9]{52})" + _R),
        min_entropy=4.0,
    ),
    VendorFormat(
        "langsmith-api-key",
        ("lsv2_",),
        _rx(_L + r"(?P<prefix>lsv2_(?:pt|sk)_)(?P<body>[0-9a-f]{32}_[0-9a-f]{10})" + _R),
        min_entropy=3.2,
    ),
)


def _prefix_and_body(match: re.Match[str]) -> tuple[str, str]:
    """(prefix, body) of a match, whichever alternative matched."""
    groups = match.re.groupindex
    prefix = match.group("prefix")
    body = match.group("body")
    if body is None and "body2" in groups:
        prefix, body = match.group("prefix2"), match.group("body2")
    return prefix or "", body or ""


def _accepts(fmt: VendorFormat, prefix: str, body: str) -> bool:
    if is_placeholder_token(body) or shannon_entropy(body) < fmt.min_entropy:
        return False
    return fmt.check is None or fmt.check(prefix, body)


def _hits_for(index: TextIndex, fmt: VendorFormat) -> list[Hit]:
    """The whole match is the reported span, as for the other known formats."""
    return _finditer_hits(index, fmt.regex, fmt.rule_id, accept=lambda match: _accepts(fmt, *_prefix_and_body(match)))


# --- formats found only with their context -----------------------------------

_HEX40 = re.compile(r"(?<![A-Za-z0-9])[0-9a-f]{40}(?![A-Za-z0-9])")
_TWILIO_SID = re.compile(r"A(?<![A-Za-z0-9]A)C[0-9a-f]{32}(?![A-Za-z0-9])")
_HEX32 = re.compile(r"(?<![A-Za-z0-9])[0-9a-f]{32}(?![A-Za-z0-9])")


def detect_wandb_legacy(index: TextIndex, offsets: Iterable[int]) -> list[Hit]:
    """Legacy 40-hex W&B keys, only on lines that mention wandb (else: a SHA-1)."""
    hits: list[Hit] = []
    for line_no in sorted({index.line_of(o) for o in offsets}):
        line = index.line_text(line_no)
        for match in _HEX40.finditer(line):
            if not is_placeholder_token(match.group()) and shannon_entropy(match.group()) >= 3.2:
                hits.append(Hit("wandb-api-key", line_no, match.start(), match.end()))
    return hits


def detect_twilio_auth_token(index: TextIndex) -> list[Hit]:
    """A 32-hex auth token within 3 lines of a Twilio account SID (AC + 32 hex)."""
    sid_lines = {index.line_of(m.start()) for m in _TWILIO_SID.finditer(index.text)}
    if not sid_lines:
        return []
    hits: list[Hit] = []
    for line_no in sorted({n + d for n in sid_lines for d in range(-3, 4)}):
        for match in _HEX32.finditer(index.line_text(line_no)):
            value = match.group()
            if not is_placeholder_token(value) and shannon_entropy(value) >= 3.2:
                hits.append(Hit("twilio-api-key", line_no, match.start(), match.end()))
    return hits


def keyword_groups() -> dict[str, tuple[str, ...]]:
    """Prefilter keyword groups for the vendor formats (merged into the prefilter's)."""
    groups = {fmt.group: fmt.keywords for fmt in VENDOR_FORMATS if fmt.keywords}
    groups["vendor:wandb-context"] = ("wandb",)
    return groups


def detect_vendor_formats(index: TextIndex, prefiltered: PrefilterResult) -> list[Hit]:
    """Every vendor format whose keywords the prefilter saw (or that needs none)."""
    hits: list[Hit] = []
    for fmt in VENDOR_FORMATS:
        if not fmt.keywords or fmt.group in prefiltered:
            hits.extend(_hits_for(index, fmt))
    if "vendor:wandb-context" in prefiltered:
        hits.extend(detect_wandb_legacy(index, prefiltered.offsets["vendor:wandb-context"]))
    hits.extend(detect_twilio_auth_token(index))
    return hits


# Every vendor regex, for scrubbing excerpts as a last line of defence.
SCRUB_PATTERNS: tuple[re.Pattern[str], ...] = tuple(fmt.regex for fmt in VENDOR_FORMATS)
