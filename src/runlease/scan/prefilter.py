"""One Aho-Corasick pass decides which detectors a file needs.

Almost every file in a DAG repository holds no credential at all. Running a dozen
regexes and an AST parse over each would dominate the scan, so each file is first
searched once, case-insensitively, for cheap keywords and prefixes (``akia``,
``-----begin``, ``ghp_``, ``password``, ``://``, ``connection(`` ...) with a
Rust-backed automaton. Only the detector groups whose keywords occur run, and
line-oriented detectors look only at the lines that hold a keyword.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import ahocorasick_rs

# group name -> lower-case keywords that make the group worth running.
KEYWORD_GROUPS: dict[str, tuple[str, ...]] = {
    "aws": ("akia", "asia", "abia", "acca", "a3t", "aws_secret", "secret_access_key", "secretaccesskey"),
    "private_key": ("-----begin",),
    "github": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab": (
        "glpat-", "gldt-", "glrt-", "glrtr-", "glptt-", "glft-", "glsoat-", "glcbt-", "glimt-", "gloas-",
        "glagent-", "glffct-", "glwt-", "gr1348941",
    ),
    "slack": ("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxr-", "xoxs-", "xoxe", "xapp-", "hooks.slack.com"),
    "jwt": ("eyj",),
    "gcp": ("service_account", "private_key_id"),
    "uri": ("://",),
    "airflow_conn": ("airflow_conn_",),
    "airflow_connection": ("connection(",),
    # Names whose literal values the generic, entropy, Airflow and KFP rules judge.
    "secret_name": (
        "passw",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "api_key",
        "api-key",
        "accesskey",
        "access_key",
        "access-key",
        "privatekey",
        "private_key",
        "private-key",
        "credential",
        "auth",
        "bearer",
        "_key",
        "key_",
        "-key",
        "salt",
        "signature",
        "cookie",
        "_pw",
    ),
}

# Groups whose presence makes a Python file worth an AST parse.
AST_GROUPS = frozenset({"secret_name", "airflow_conn", "airflow_connection"})
# Lines holding these groups' keywords are the only ones the AST rules can fire on.
AST_FOCUS_GROUPS = AST_GROUPS | {"uri"}


@dataclass
class PrefilterResult:
    """Which groups matched, and at which offsets (for line-level narrowing)."""

    groups: set[str] = field(default_factory=set)
    offsets: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def __contains__(self, group: str) -> bool:
        return group in self.groups

    @property
    def empty(self) -> bool:
        return not self.groups


class Prefilter:
    """Compiled keyword automaton; build once per process and reuse."""

    def __init__(self, groups: dict[str, tuple[str, ...]] | None = None) -> None:
        groups = groups or KEYWORD_GROUPS
        self._keywords: list[str] = []
        self._group_of: list[str] = []
        for group, words in groups.items():
            for word in words:
                self._keywords.append(word)
                self._group_of.append(group)
        self._automaton = ahocorasick_rs.AhoCorasick(self._keywords)

    def run(self, lower_text: str) -> PrefilterResult:
        """Search ``lower_text`` (already lower-cased) for every keyword at once."""
        result = PrefilterResult()
        group_of = self._group_of
        for index, start, _end in self._automaton.find_matches_as_indexes(lower_text, overlapping=True):
            group = group_of[index]
            result.groups.add(group)
            result.offsets[group].append(start)
        return result


_DEFAULT: Prefilter | None = None


def default_prefilter() -> Prefilter:
    """The process-wide automaton over :data:`KEYWORD_GROUPS` (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        from .vendors import keyword_groups  # vendors imports this module

        _DEFAULT = Prefilter({**KEYWORD_GROUPS, **keyword_groups()})
    return _DEFAULT
