"""File-level rules for .env files and their templates.

A committed ``.env`` is a finding by itself, whatever it holds today: it is the
file teams put real secrets in, and once tracked, the next secret added to it is
committed too. Templates (``.env.example`` and friends) are meant to be committed,
so for them only real-looking values of secret-named keys are findings.
"""

from __future__ import annotations

import re

from .models import Hit
from .names import is_secret_name
from .patterns import classify_literal
from .textindex import TextIndex
from .values import is_placeholder

_TEMPLATE_WORDS = ("example", "template", "sample", "dist", "tpl", "defaults", "skeleton")
_LINE = re.compile(
    r"""^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*=\s*"""
    r"""(?:"(?P<v1>[^"\n]*)"|'(?P<v2>[^'\n]*)'|(?P<v4>[^\s#]*))"""
)


def dotenv_kind(basename: str) -> str | None:
    """'template' for .env.example-style names, 'env' for real .env files, else None."""
    name = basename.lower()
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        parts = set(re.split(r"[._-]", name))
        if parts & set(_TEMPLATE_WORDS):
            return "template"
        return "env"
    return None


def detect_dotenv_file(tracked: bool | None) -> list[Hit]:
    """The file itself, when git tracks it (or when there is no git to ask)."""
    if tracked is False:
        return []
    why = "tracked by git" if tracked else "outside a git work tree; would be committed"
    return [Hit("dotenv-file", 1, 0, 0, message=f".env file ({why})")]


def detect_template_values(index: TextIndex) -> list[Hit]:
    """Secret-named keys given real-looking values in a .env template."""
    hits: list[Hit] = []
    for line_no, line in enumerate(index.lines, start=1):
        match = _LINE.match(line)
        if not match:
            continue
        name = match.group("name")
        group = next(g for g in ("v1", "v2", "v4") if match.group(g) is not None)
        value = match.group(group)
        if not is_secret_name(name) or is_placeholder(value, name):
            continue
        if classify_literal(name, value) is not None:
            hits.append(Hit("dotenv-template-value", line_no, match.start(group), match.end(group)))
    return hits
