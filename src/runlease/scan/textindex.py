"""Line bookkeeping for one file's text: offsets <-> (line, column).

Detectors that run a regex over the whole file (fast: one C-level pass) need to
turn a match offset into a line number, and the excerpt builder needs the lines.
Line breaks follow Python's tokenizer (\\r\\n, \\r, \\n) so AST line numbers and
regex line numbers agree.
"""

from __future__ import annotations

import bisect
import re
from functools import cached_property

_NEWLINE = re.compile(r"\r\n|\r|\n")


class TextIndex:
    """A file's text with lazily computed line starts and lines."""

    __slots__ = ("text", "__dict__")

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def lines(self) -> list[str]:
        """The file's lines without their terminators (index 0 is line 1)."""
        return _NEWLINE.split(self.text)

    @cached_property
    def line_starts(self) -> list[int]:
        """Offset of the first character of every line."""
        starts = [0]
        starts.extend(m.end() for m in _NEWLINE.finditer(self.text))
        return starts

    @cached_property
    def lower(self) -> str:
        """Lower-cased text, shared by the prefilter and keyword line lookups."""
        return self.text.lower()

    def line_of(self, offset: int) -> int:
        """1-based line number holding ``offset``."""
        return bisect.bisect_right(self.line_starts, offset)

    def position(self, offset: int) -> tuple[int, int]:
        """(1-based line, 0-based column) of ``offset``."""
        line = self.line_of(offset)
        return line, offset - self.line_starts[line - 1]

    def line_text(self, line: int) -> str:
        """Text of 1-based ``line`` ('' when out of range)."""
        lines = self.lines
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def span_end_on_line(self, start_offset: int, end_offset: int) -> int | None:
        """Column where a match ending at ``end_offset`` stops on its start line.

        None when the match runs past the end of that line (multi-line value).
        """
        line, col = self.position(start_offset)
        end_line = self.line_of(max(start_offset, end_offset - 1))
        if end_line != line:
            return None
        return col + (end_offset - start_offset)
